"""The filesystem trigger over a temporary folder, polled with injected times."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from trigger_fakes import FakeSubmitter

from tracemind.triggers import FilesystemSpec
from tracemind.triggers.dispatch import Dispatcher, TriggerStats
from tracemind.triggers.fs_trigger import FilesystemTrigger
from tracemind.triggers.state import TriggerStateStore

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
MTIME_S = 1_700_000_000

MakeWatcher = Callable[..., FilesystemTrigger]


@pytest.fixture
def incoming(project: Path) -> Path:
    return project / "incoming"


@pytest.fixture
def make_watcher(load: Any, project: Path) -> MakeWatcher:
    """A fresh trigger over the same state dir (a new one per call = a restart)."""

    def make(submitter: FakeSubmitter, **keys: Any) -> FilesystemTrigger:
        entry = {
            "id": "ingest",
            "kind": "filesystem",
            "path": "incoming",
            "pattern": "*.json",
            "flow": "flows/hello.yaml",
            "input": {
                "file": "{{ path }}",
                "name": "{{ name }}",
                "size": "{{ size }}",
                "mtime": "{{ mtime }}",
                "parent": "{{ parent }}",
            },
            **keys,
        }
        spec = load(entry).triggers[0]
        assert isinstance(spec, FilesystemSpec)
        dispatcher = Dispatcher(spec, {"flow": "hello"}, submitter, TriggerStats())
        return FilesystemTrigger(spec, dispatcher, TriggerStateStore(project / "state"))

    return make


def put(path: Path, text: str, mtime_s: int = MTIME_S) -> Path:
    """Write a file with a fixed mtime, so versions are deterministic."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.utime(path, (mtime_s, mtime_s))
    return path


def polls(watcher: FilesystemTrigger, count: int, start: int = 0) -> list[int]:
    """Step ``count`` times, 5 s apart; how many events each poll submitted."""
    return [watcher.step(T0 + timedelta(seconds=5 * (start + i))) for i in range(count)]


def test_a_new_file_fires_once_after_two_stable_polls(
    make_watcher: MakeWatcher, submitter: FakeSubmitter, incoming: Path
) -> None:
    watcher = make_watcher(submitter)
    watcher.start(T0)
    assert polls(watcher, 1) == [0]
    put(incoming / "a.json", '{"n": 1}')
    # first sight: waiting; second poll: same size and mtime -> fires; later polls: nothing
    assert polls(watcher, 4, start=1) == [0, 1, 0, 0]
    (call,) = submitter.calls
    assert call.key == f"ingest:a.json:8:{MTIME_S * 10**9}"
    assert call.inputs == {
        "file": str(incoming / "a.json"),
        "name": "a.json",
        "size": 8,
        "mtime": float(MTIME_S),
        "parent": str(incoming),
    }
    assert call.trigger is not None and call.trigger["kind"] == "filesystem"


def test_a_changed_file_fires_again(
    make_watcher: MakeWatcher, submitter: FakeSubmitter, incoming: Path
) -> None:
    watcher = make_watcher(submitter)
    watcher.start(T0)
    put(incoming / "a.json", "{}")
    assert sum(polls(watcher, 3)) == 1
    # same size, new mtime: a new version
    put(incoming / "a.json", "[]", mtime_s=MTIME_S + 60)
    assert polls(watcher, 3, start=3) == [0, 1, 0]
    assert [call.key for call in submitter.calls] == [
        f"ingest:a.json:2:{MTIME_S * 10**9}",
        f"ingest:a.json:2:{(MTIME_S + 60) * 10**9}",
    ]


def test_a_half_written_file_waits_until_it_stops_changing(
    make_watcher: MakeWatcher, submitter: FakeSubmitter, incoming: Path
) -> None:
    watcher = make_watcher(submitter)
    watcher.start(T0)
    target = incoming / "big.json"
    put(target, '{"part": 1', mtime_s=MTIME_S)
    assert polls(watcher, 1) == [0]
    put(target, '{"part": 1, "more": 2', mtime_s=MTIME_S + 1)  # still growing
    assert polls(watcher, 1, start=1) == [0]
    put(target, '{"part": 1, "more": 2}', mtime_s=MTIME_S + 2)  # done
    assert polls(watcher, 3, start=2) == [0, 1, 0]
    (call,) = submitter.calls
    assert call.inputs["size"] == len('{"part": 1, "more": 2}')


def test_files_present_at_the_first_start_fire(
    make_watcher: MakeWatcher, submitter: FakeSubmitter, incoming: Path
) -> None:
    put(incoming / "old.json", "{}")
    watcher = make_watcher(submitter)
    watcher.start(T0)
    assert sum(polls(watcher, 3)) == 1
    assert submitter.calls[0].inputs["name"] == "old.json"


def test_ignore_existing_skips_files_present_at_the_first_start_only(
    make_watcher: MakeWatcher, submitter: FakeSubmitter, incoming: Path
) -> None:
    put(incoming / "old.json", "{}")
    watcher = make_watcher(submitter, ignore_existing=True)
    watcher.start(T0)
    put(incoming / "new.json", "{}")
    assert sum(polls(watcher, 3)) == 1
    assert [call.inputs["name"] for call in submitter.calls] == ["new.json"]
    # An ignored file that changes later is a new version and fires.
    put(incoming / "old.json", '{"v": 2}')
    assert sum(polls(watcher, 3, start=3)) == 1
    assert submitter.calls[-1].inputs["name"] == "old.json"
    # A file that arrives while nothing runs fires on the next start, ignore_existing or not.
    put(incoming / "while-down.json", "{}")
    restarted = make_watcher(submitter, ignore_existing=True)
    restarted.start(T0 + timedelta(minutes=5))
    assert sum(polls(restarted, 3, start=60)) == 1
    assert submitter.calls[-1].inputs["name"] == "while-down.json"


def test_restarts_never_refire_a_version_even_after_the_idempotency_ttl(
    make_watcher: MakeWatcher, incoming: Path
) -> None:
    first_submitter = FakeSubmitter()
    watcher = make_watcher(first_submitter)
    watcher.start(T0)
    put(incoming / "a.json", "{}")
    assert sum(polls(watcher, 3)) == 1
    # Given a restart whose idempotency store forgot every key (a fresh fake: TTL expired)
    forgetful = FakeSubmitter()
    restarted = make_watcher(forgetful)
    restarted.start(T0 + timedelta(days=3))
    # Then the file is not enqueued again: the trigger's own record holds
    assert sum(polls(restarted, 4, start=100)) == 0
    assert forgetful.calls == []


def test_pattern_hidden_files_and_subfolders(
    make_watcher: MakeWatcher, submitter: FakeSubmitter, incoming: Path
) -> None:
    put(incoming / "a.json", "{}")
    put(incoming / "notes.txt", "x")
    put(incoming / ".a.json.swp.json", "x")  # an editor's temp file
    put(incoming / "sub" / "b.json", "{}")
    put(incoming / ".hidden" / "c.json", "{}")
    flat = make_watcher(submitter)
    flat.start(T0)
    polls(flat, 2)
    assert [call.inputs["name"] for call in submitter.calls] == ["a.json"]


def test_recursive_watches_subfolders_with_relative_keys(
    make_watcher: MakeWatcher, submitter: FakeSubmitter, incoming: Path
) -> None:
    put(incoming / "a.json", "{}", mtime_s=MTIME_S)
    put(incoming / "sub" / "deeper" / "b.json", "{}", mtime_s=MTIME_S + 1)
    put(incoming / ".hidden" / "c.json", "{}")
    watcher = make_watcher(submitter, recursive=True)
    watcher.start(T0)
    polls(watcher, 2)
    assert [call.key for call in submitter.calls] == [
        f"ingest:a.json:2:{MTIME_S * 10**9}",
        f"ingest:sub/deeper/b.json:2:{(MTIME_S + 1) * 10**9}",
    ]


def test_a_failed_submission_is_retried_at_the_next_poll(
    make_watcher: MakeWatcher, submitter: FakeSubmitter, incoming: Path
) -> None:
    watcher = make_watcher(submitter)
    watcher.start(T0)
    put(incoming / "a.json", "{}")
    submitter.failing = True
    assert polls(watcher, 3) == [0, 0, 0]
    assert watcher.dispatcher.stats.failed == 2
    submitter.failing = False
    assert polls(watcher, 2, start=3) == [1, 0]
    assert len(submitter.calls) == 1


def test_the_record_is_kept_in_the_state_dir_and_pruned_when_files_go(
    make_watcher: MakeWatcher, submitter: FakeSubmitter, incoming: Path, project: Path
) -> None:
    watcher = make_watcher(submitter)
    watcher.start(T0)
    put(incoming / "a.json", "{}")
    polls(watcher, 2)
    state_file = project / "state" / "triggers" / "ingest.json"
    assert json.loads(state_file.read_text())["files"] == {"a.json": f"2:{MTIME_S * 10**9}"}
    assert state_file.stat().st_mode & 0o777 == 0o660
    (incoming / "a.json").unlink()
    polls(watcher, 1, start=2)
    assert json.loads(state_file.read_text())["files"] == {}


def test_a_vanished_folder_is_reported_not_fatal(
    make_watcher: MakeWatcher, submitter: FakeSubmitter, incoming: Path
) -> None:
    watcher = make_watcher(submitter)
    watcher.start(T0)
    shutil.rmtree(incoming)
    assert polls(watcher, 1) == [0]
    assert "cannot list" in (watcher.dispatcher.stats.last_error or "")
    incoming.mkdir()
    put(incoming / "a.json", "{}")
    assert sum(polls(watcher, 2, start=1)) == 1


def test_a_damaged_state_file_reads_as_a_first_start(
    make_watcher: MakeWatcher, submitter: FakeSubmitter, incoming: Path, project: Path
) -> None:
    put(incoming / "a.json", "{}")
    state_dir = project / "state" / "triggers"
    state_dir.mkdir(parents=True)
    (state_dir / "ingest.json").write_text('{"started_at": ')
    watcher = make_watcher(submitter)
    watcher.start(T0)
    assert sum(polls(watcher, 2)) == 1
    assert json.loads((state_dir / "ingest.json").read_text())["files"] == {
        "a.json": f"2:{MTIME_S * 10**9}"
    }
