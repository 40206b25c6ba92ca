"""Entries that are not regular files (FIFO, socket, directory, symlinks) or are over the size
limit, in every store directory: no reader or writer blocks on one or reads it whole; writers move
it to quarantine with one log line, readers skip it; every other task keeps flowing.

A regression would hang in ``open``: each test is bounded by a timeout.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from special_entries import HUGE_BYTES, NOT_REGULAR, make_entry
from tm_testing import FakeClock, done_path, make_task, pending_path
from tracemind.backend.file.problems import ProblemBoard, unreadable_records
from tracemind.backend.file.stores import Stores
from tracemind.errors import QueueError
from tracemind.fsutil import MAX_RECORD_BYTES, DamagedEntry, read_json, read_regular
from tracemind.queue.names import InflightName, PendingName
from tracemind.queue.protocol import Failure, TaskStatus

pytestmark = pytest.mark.timeout(30)

LEASE_S = 30.0
SPECIAL = sorted([*NOT_REGULAR, "huge"])
"""Kinds that must never be opened with a blocking open nor read whole."""


def _quarantine_lines(logs: list[dict[str, Any]], path: Path) -> list[dict[str, Any]]:
    """Quarantine lines about the entry at ``path`` (or about its task, once claimed: a regular
    file is read after the claim, from inflight/)."""
    task_id = path.name.split("_")[1] if "_" in path.name else path.name
    return [
        e
        for e in logs
        if "quarantined" in e["event"]
        and (e.get("path") == str(path) or f"/inflight/{task_id}_" in e.get("path", ""))
    ]


def _drain(stores: Stores) -> list[str]:
    leased = []
    while (lease := stores.queue.lease("c1", LEASE_S)) is not None:
        stores.queue.ack(lease, {})
        leased.append(lease.task_id)
    return leased


@pytest.mark.parametrize("kind", SPECIAL)
def test_read_regular_refuses_what_is_not_a_small_regular_file(tmp_path: Path, kind: str) -> None:
    path = make_entry(tmp_path / "entry.json", kind)
    with pytest.raises(DamagedEntry):
        read_regular(path)
    with pytest.raises(ValueError):  # what every store already treats as damage
        read_json(path)


def test_read_regular_reads_a_record_up_to_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "big.json"
    with open(path, "wb") as handle:
        handle.truncate(MAX_RECORD_BYTES)
    assert len(read_regular(path)) == MAX_RECORD_BYTES
    assert HUGE_BYTES > MAX_RECORD_BYTES
    assert read_regular(make_entry(tmp_path / "e", "empty")) == b""


@pytest.mark.parametrize("garbage_name", [False, True], ids=["task-name", "garbage-name"])
@pytest.mark.parametrize("kind", SPECIAL)
def test_a_special_entry_in_pending_is_quarantined_and_the_other_tasks_run(
    stores: Stores, clock: FakeClock, logs: list[dict[str, Any]], kind: str, garbage_name: bool
) -> None:
    # Given two good tasks, and a special entry in pending/ that is due first
    good = [make_task(clock), make_task(clock)]
    stores.queue.enqueue(good)
    name = "junk" if garbage_name else str(PendingName(0, make_task(clock).task_id, 0))
    bucket = pending_path(stores.queue, PendingName(0, "0" * 22, 0)).parent  # the oldest
    special = make_entry(bucket / name, kind)
    # Then readers skip it, counting it as damaged (a regular file named like a task counts by
    # its name until a consumer reads it), and change nothing
    stats = stores.queue.stats()
    by_name = kind not in NOT_REGULAR and not garbage_name
    assert (stats.pending, stats.damaged) == ((3, 0) if by_name else (2, 1))
    if not garbage_name:  # named like a task: shown, as a damaged record (never opened)
        info = stores.queue.find(name.split("_")[1])
        assert info is not None and info.record == {}
    assert os.path.lexists(special)
    # When a consumer drains the queue
    leased = _drain(stores)
    # Then both good tasks ran, and the entry was moved aside with one log line
    assert sorted(leased) == sorted(t.task_id for t in good)
    assert not os.path.lexists(special)
    assert len(_quarantine_lines(logs, special)) == 1
    assert len(list((stores.queue.root / "quarantine").iterdir())) == 1
    assert stores.queue.stats().damaged == 0


@pytest.mark.parametrize("kind", SPECIAL)
def test_a_special_entry_in_inflight_is_quarantined_by_recovery(
    stores: Stores, clock: FakeClock, logs: list[dict[str, Any]], kind: str
) -> None:
    # Given a special entry named like a lease (live or expired), and a good task
    good = make_task(clock)
    stores.queue.enqueue([good])
    stores.queue.prepare()
    names = [
        str(InflightName(make_task(clock).task_id, 1, "dead-0", "0" * 8, deadline_ms))
        for deadline_ms in (0, int((clock() + 600) * 1000))
    ]
    specials = [make_entry(stores.queue.inflight_dir / n, kind) for n in names[:1]]
    specials.append(stores.queue.inflight_dir / names[1])
    os.mkfifo(specials[1])
    # Then readers do not count them as leases (a regular file counts by its name)
    assert stores.queue.stats().inflight == (1 if kind == "huge" else 0)
    assert stores.queue.held_by("dead-") == 2  # by name only, never opened
    # When recovery runs
    stores.queue.recover()
    # Then both are moved aside with one log line each, and the good task runs
    for special in specials:
        assert not os.path.lexists(special)
        assert len(_quarantine_lines(logs, special)) == 1
    assert _drain(stores) == [good.task_id]


@pytest.mark.parametrize("kind", SPECIAL)
def test_a_special_done_record_still_fences_and_readers_answer(
    stores: Stores, clock: FakeClock, kind: str
) -> None:
    task = make_task(clock)
    stores.queue.enqueue([task])
    lease = stores.queue.lease("c1", LEASE_S)
    assert lease is not None
    stores.queue.ack(lease, {"ok": True})
    done = done_path(stores.queue, task.task_id)
    done.unlink()
    make_entry(done, kind)

    info = stores.queue.find(task.task_id)

    if kind == "dangling-symlink":  # points at nothing: there is no record to show
        assert info is None
    else:
        assert info is not None and (info.status, info.record) == (TaskStatus.SUCCEEDED, {})


@pytest.mark.parametrize("kind", SPECIAL)
def test_special_dlq_entries_are_skipped_by_readers_and_quarantined_by_writers(
    stores: Stores, clock: FakeClock, logs: list[dict[str, Any]], kind: str
) -> None:
    # Given a real dead task, a special entry named like an entry, and special archive entries
    task = make_task(clock, max_attempts=1)
    stores.queue.enqueue([task])
    lease = stores.queue.lease("c1", LEASE_S)
    assert lease is not None
    stores.queue.dead_letter(lease, Failure("boom"))
    odd_id = make_task(clock).task_id
    special = make_entry(stores.dlq.root / f"{odd_id}.json", kind)
    for folder in ("purged", "requeued"):
        (stores.dlq.root / folder).mkdir()
        make_entry(stores.dlq.root / folder / f"{odd_id}.1.json", kind)
    # Then readers see the one real entry and never open the special one
    assert [e["task_id"] for e in stores.dlq.newest_first()] == [task.task_id]
    assert stores.dlq.count() == 1
    assert stores.dlq.get(odd_id) is None
    assert stores.dlq.damaged() == [str(special)]
    # When a writer quarantines damaged entries
    assert stores.dlq.quarantine_damaged() == 1
    # Then the special entry is moved aside (one log line); the store's own folders stay
    assert not os.path.lexists(special)
    assert len(_quarantine_lines(logs, special)) == 1
    assert stores.dlq.damaged() == []
    assert stores.requeue_dead(task.task_id)


@pytest.mark.parametrize("kind", SPECIAL)
def test_a_special_idempotency_record_blocks_nothing_and_is_quarantined(
    stores: Stores, clock: FakeClock, echo_snapshot: Any, kind: str
) -> None:
    submitter = stores.submitter(3600.0)
    first = submitter.submit(echo_snapshot, {}, idempotency_key="k")
    path = Path(stores.keys._path("k"))
    path.unlink()
    make_entry(path, kind)

    assert stores.keys.get("k") is None
    again = submitter.submit(echo_snapshot, {}, idempotency_key="k")

    assert not again.duplicate and again.task_id != first.task_id
    assert stores.keys.get("k") is not None
    assert list((stores.keys.root / "quarantine").iterdir())


def test_a_special_state_file_reads_as_absent(tmp_path: Path) -> None:
    from tracemind.daemon.state import StateDir, liveness

    state = StateDir(tmp_path)
    for path, kind in (
        (state.meta_path, "fifo"),
        (state.heartbeat_path, "huge"),
        (state.lock_path, "fifo"),
        (state.stop_request_path, "socket"),
    ):
        make_entry(path, kind)

    assert state.meta() is None and state.heartbeat() is None
    assert state.read_json(state.stop_request_path) is None
    assert liveness(state).state in ("stopped", "unresponsive")


# -- a record this process may not read: never damage ------------------------------------------


@pytest.fixture
def unreadable(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """Paths whose open fails with EACCES (tests run as root, which ignores mode bits; the real
    thing, with another uid, is in tests/daemon/test_daemon_special_entries.py)."""
    import tracemind.backend.file.problems as problems
    import tracemind.fsutil as fsutil

    denied: set[str] = set()
    real_open = os.open

    def fake_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if os.fspath(path) in denied:
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(fsutil.os, "open", fake_open)
    monkeypatch.setattr(problems, "_logged", set())
    return denied


def test_a_task_it_may_not_read_stays_pending_is_logged_once_and_reported(
    stores: Stores, clock: FakeClock, logs: list[dict[str, Any]], unreadable: set[str]
) -> None:
    # Given a task this process may not read, due before a good one
    locked, good = make_task(clock), make_task(clock)
    stores.queue.enqueue([locked])
    clock.advance(0.01)
    stores.queue.enqueue([good])
    [path] = [p for p in stores.queue.pending_dir.glob("*/*/*") if locked.task_id in p.name]
    unreadable.add(str(path))
    # When consumers in this process try again and again
    leased = _drain(stores)
    for _ in range(3):
        clock.advance(2)
        stores.queue.recover()
        assert stores.queue.lease("c1", LEASE_S) is None
    # Then the good task ran, the other stayed where it was (never quarantined)
    assert leased == [good.task_id]
    assert path.exists()
    assert not (stores.queue.root / "quarantine").exists()
    # And it was logged once, with the fix, and reported to every other process
    lines = [e for e in logs if e.get("path") == str(path)]
    assert len(lines) == 1 and "not readable" in lines[0]["event"]
    assert "group" in lines[0]["fix"] and lines[0]["uid"] == os.geteuid()
    count, first = unreadable_records(stores.queue.root)
    assert count == 1 and first[0]["record"] == str(path.relative_to(stores.queue.root))
    # When it becomes readable, it runs (at the next try), and the report goes away
    unreadable.clear()
    clock.advance(2)
    assert _drain(stores) == [locked.task_id]
    assert unreadable_records(stores.queue.root) == (0, [])


def test_a_task_it_may_not_read_does_not_hold_back_the_buckets_after_it(
    stores: Stores, clock: FakeClock, unreadable: set[str]
) -> None:
    # Given a task this process may not read, alone in its second's bucket, and good tasks
    # due in the next seconds
    locked = make_task(clock)
    stores.queue.enqueue([locked])
    later = []
    for _ in range(2):
        clock.advance(1.0)
        later.append(make_task(clock))
        stores.queue.enqueue([later[-1]])
    [path] = [p for p in stores.queue.pending_dir.glob("*/*/*") if locked.task_id in p.name]
    unreadable.add(str(path))
    # When a consumer drains, Then it runs the later tasks (the locked one waits where it is)
    assert _drain(stores) == [t.task_id for t in later]
    assert path.exists()


def test_a_report_whose_record_is_gone_is_ignored_by_readers_and_swept_by_writers(
    stores: Stores, clock: FakeClock, unreadable: set[str]
) -> None:
    task = make_task(clock)
    stores.queue.enqueue([task])
    [path] = list(stores.queue.pending_dir.glob("*/*/*.json"))
    ProblemBoard(stores.queue.root, stores.queue.tmp_dir).report(
        str(path.relative_to(stores.queue.root)), PermissionError(errno.EACCES, "Permission denied")
    )
    assert unreadable_records(stores.queue.root)[0] == 1

    path.unlink()  # e.g. another uid, which may read it, ran it

    assert unreadable_records(stores.queue.root) == (0, [])
    assert list((stores.queue.root / "problems").iterdir())  # readers change nothing
    stores.queue.recover()
    assert list((stores.queue.root / "problems").iterdir()) == []


def test_an_expired_lease_it_may_not_read_stays_in_inflight(
    stores: Stores, clock: FakeClock, logs: list[dict[str, Any]], unreadable: set[str]
) -> None:
    stores.queue.enqueue([make_task(clock)])
    lease = stores.queue.lease("dead-0", LEASE_S)
    assert lease is not None
    path = stores.queue.inflight_dir / str(lease.handle)
    unreadable.add(str(path))
    clock.advance(LEASE_S + 1)

    assert stores.queue.recover() == 0
    assert stores.queue.recover() == 0

    assert path.exists() and not (stores.queue.root / "quarantine").exists()
    assert len([e for e in logs if e.get("path") == str(path)]) == 1
    assert unreadable_records(stores.queue.root)[0] == 1


def test_readers_and_writers_never_call_an_entry_they_may_not_read_damaged(
    stores: Stores, clock: FakeClock, echo_snapshot: Any, unreadable: set[str]
) -> None:
    # A DLQ entry: skipped by readers, not damaged, so never quarantined
    task = make_task(clock, max_attempts=1)
    stores.queue.enqueue([task])
    lease = stores.queue.lease("c1", LEASE_S)
    assert lease is not None
    stores.queue.dead_letter(lease, Failure("boom"))
    entry = stores.dlq.root / f"{task.task_id}.json"
    unreadable.add(str(entry))
    assert stores.dlq.count() == 0 and stores.dlq.damaged() == []
    assert stores.dlq.quarantine_damaged() == 0 and entry.exists()
    # A task record: `tm task show` fails with the fix instead of calling it damaged
    other = make_task(clock)
    stores.queue.enqueue([other])
    [pending] = list(stores.queue.pending_dir.glob("*/*/*.json"))
    unreadable.add(str(pending))
    with pytest.raises(QueueError, match=r"cannot read .*group"):
        stores.queue.find(other.task_id)
    # An idempotency record: the key neither counts as new nor is quarantined
    submitter = stores.submitter(3600.0)
    submitter.submit(echo_snapshot, {}, idempotency_key="k")
    key = Path(stores.keys._path("k"))
    unreadable.add(str(key))
    with pytest.raises(QueueError, match="cannot read"):
        submitter.submit(echo_snapshot, {}, idempotency_key="k")
    assert key.exists() and not (stores.keys.root / "quarantine").exists()
