"""The dead-letter queue: listing, showing, requeueing and purging (library and ``tm dlq``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tm_testing import FakeClock, FlowFiles, Tm, files_under, json_lines, make_task
from tracemind.backend.file.stores import Stores, open_stores
from tracemind.config import DataDirs
from tracemind.queue.protocol import Failure, TaskStatus

LEASE_S = 30.0


def _kill(stores: Stores, clock: FakeClock, error: str = "boom", **task: Any) -> str:
    """Enqueue a task and dead-letter its first delivery; returns its id."""
    new = make_task(clock, max_attempts=1, **task)
    stores.queue.enqueue([new])
    lease = stores.queue.lease("c1", LEASE_S)
    assert lease is not None and lease.task_id == new.task_id
    stores.queue.dead_letter(lease, Failure(f"RuntimeError: {error}", f"Traceback: {error}"))
    return new.task_id


def test_entries_are_listed_newest_first(stores: Stores, clock: FakeClock) -> None:
    ids = []
    for n in range(3):
        ids.append(_kill(stores, clock, error=f"e{n}"))
        clock.advance(5)

    assert [e["task_id"] for e in stores.dlq.newest_first()] == ids[::-1]


def test_requeue_puts_the_same_task_back_with_its_history_and_archives_the_entry(
    stores: Stores, clock: FakeClock
) -> None:
    # Given a dead task
    task_id = _kill(stores, clock, inputs={"x": 1})
    # When it is requeued
    assert stores.requeue_dead(task_id) is True
    # Then the same id is pending again, delivered as attempt 1 with its input and past history
    info = stores.queue.find(task_id)
    assert info is not None and info.status is TaskStatus.PENDING
    assert stores.dlq.get(task_id) is None
    [archived] = (stores.dlq.root / "requeued").iterdir()
    assert json.loads(archived.read_text())["requeued_at"] == clock()
    lease = stores.queue.lease("c2", LEASE_S)
    assert lease is not None and (lease.task_id, lease.attempt) == (task_id, 1)
    assert lease.record["input"] == {"x": 1}
    assert [h["error"] for h in lease.record["history"]] == ["RuntimeError: boom"]
    assert "lease_token" not in lease.record and "dead_at" not in lease.record


def test_a_requeued_task_is_visible_to_a_consumer_that_already_listed(
    stores: Stores, clock: FakeClock, dirs: DataDirs
) -> None:
    task_id = _kill(stores, clock)
    running = open_stores(dirs, durable=False, clock=clock).queue
    assert running.lease("c9", LEASE_S) is None  # the consumer is idle, its listing empty

    stores.requeue_dead(task_id)

    lease = running.lease("c9", LEASE_S)
    assert lease is not None and lease.task_id == task_id


def test_requeue_after_a_dead_letter_that_crashed_before_removing_its_lease_keeps_one_copy(
    stores: Stores, clock: FakeClock
) -> None:
    # Given a dead-letter that wrote the DLQ entry and died before deleting its inflight file
    new = make_task(clock, max_attempts=1)
    stores.queue.enqueue([new])
    lease = stores.queue.lease("c1", LEASE_S)
    assert lease is not None
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(stores.queue, "_discard", lambda path, reason: False)
    stores.queue.dead_letter(lease, Failure("boom"))
    monkeypatch.undo()
    assert stores.queue.stats().inflight == 1
    # When the entry is requeued, and later that lease would have expired
    assert stores.requeue_dead(new.task_id) is True
    clock.advance(3600)
    stores.queue.recover()
    # Then there is one copy of the task, pending
    assert stores.queue.stats().pending == 1 and stores.queue.stats().inflight == 0


def test_requeue_and_purge_of_one_entry_racing_each_other_take_it_once(
    stores: Stores, clock: FakeClock, dirs: DataDirs
) -> None:
    # Given a dead task seen by two processes' stores
    task_id = _kill(stores, clock)
    other = open_stores(dirs, durable=False, clock=clock)
    # When both requeue it, then both purge it
    assert [stores.requeue_dead(task_id), other.requeue_dead(task_id)] == [True, False]
    assert [stores.dlq.purge(task_id), other.dlq.purge(task_id)] == [False, False]
    # Then it is pending once, with one requeue audit copy and no purge
    assert stores.queue.stats().pending == 1
    assert len(list((stores.dlq.root / "requeued").iterdir())) == 1
    assert not (stores.dlq.root / "purged").exists()


def test_requeue_of_an_unknown_task_changes_nothing(stores: Stores) -> None:
    assert stores.requeue_dead("0" * 22) is False
    assert files_under(stores.dirs.queue.parent) == []


def test_purge_removes_the_entry_and_keeps_an_audit_copy(stores: Stores, clock: FakeClock) -> None:
    task_id = _kill(stores, clock)
    entry = stores.dlq.get(task_id)

    assert stores.dlq.purge(task_id) is True

    assert stores.dlq.get(task_id) is None
    assert stores.queue.find(task_id) is None
    [audit] = (stores.dlq.root / "purged").iterdir()
    kept = json.loads(audit.read_text())
    assert kept == {**(entry or {}), "purged_at": clock()}
    assert stores.dlq.purge(task_id) is False


# -- tm dlq ------------------------------------------------------------------------------------


@pytest.fixture
def dead(dirs: DataDirs) -> list[str]:
    """Three dead tasks in the test's data root (oldest first), made through the library."""
    clock = FakeClock()
    stores = open_stores(dirs, durable=False, clock=clock)
    ids = []
    for n in range(3):
        ids.append(_kill(stores, clock, error=f"e{n}", inputs={"n": n}))
        clock.advance(60)
    return ids


def test_tm_dlq_ls_lists_newest_first(tm: Tm, dead: list[str]) -> None:
    entries = tm.json("dlq", "ls", "--json")
    text = tm("dlq", "ls")

    assert [e["task_id"] for e in entries] == dead[::-1]
    assert entries[0]["error"] == "RuntimeError: e2"
    assert entries[0]["attempts"] == 1
    assert entries[0]["dead_at"].endswith("Z")
    assert text.returncode == 0 and dead[0] in text.stdout


def test_tm_dlq_show_prints_the_error_traceback_history_and_input(tm: Tm, dead: list[str]) -> None:
    shown = tm.json("dlq", "show", dead[1])

    assert shown["task_id"] == dead[1]
    assert shown["error"] == "RuntimeError: e1"
    assert shown["traceback"] == "Traceback: e1"
    assert shown["input"] == {"n": 1}
    assert [h["attempt"] for h in shown["history"]] == [1]


def test_tm_dlq_requeue_one_then_all(tm: Tm, dead: list[str], dirs: DataDirs) -> None:
    one = tm.json("dlq", "requeue", dead[0], "--json")
    rest = tm.json("dlq", "requeue", "--all", "--json")

    assert one == {"requeued": [dead[0]]}
    assert sorted(rest["requeued"]) == sorted(dead[1:])
    assert tm.json("dlq", "ls", "--json") == []
    stores = open_stores(dirs, durable=False)
    assert {t: stores.queue.find(t).status for t in dead} == dict.fromkeys(  # type: ignore[union-attr]
        dead, TaskStatus.PENDING
    )


def test_tm_dlq_purge_all_keeps_audit_copies(tm: Tm, dead: list[str], dirs: DataDirs) -> None:
    purged = tm.json("dlq", "purge", "--all", "--json")

    assert sorted(purged["purged"]) == sorted(dead)
    assert tm.json("dlq", "ls", "--json") == []
    audits = sorted(p.name.split(".")[0] for p in (dirs.dlq / "purged").iterdir())
    assert audits == sorted(dead)
    assert tm.json("queue", "stats", "--json")["dead"] == 0


@pytest.mark.parametrize("verb", ["requeue", "purge", "show"])
def test_tm_dlq_verbs_on_an_unknown_task_exit_1(tm: Tm, dead: list[str], verb: str) -> None:
    proc = tm("dlq", verb, "0" * 22)

    assert proc.returncode == 1
    assert proc.stderr.strip() == (f"tm: error: task {'0' * 22} is not in the dead-letter queue")


@pytest.mark.parametrize("args", [[], [None, "--all"]])
@pytest.mark.parametrize("verb", ["requeue", "purge"])
def test_tm_dlq_writers_need_exactly_one_of_an_id_or_all(
    tm: Tm, dead: list[str], verb: str, args: list[Any]
) -> None:
    argv = [dead[0] if a is None else a for a in args]

    proc = tm("dlq", verb, *argv)

    assert proc.returncode == 2
    assert "give either a task ID or --all" in proc.stderr
    assert len(tm.json("dlq", "ls", "--json")) == 3


def test_tm_dlq_requeue_all_quarantines_damaged_entries_and_logs_to_stderr(
    tm: Tm, dead: list[str], dirs: DataDirs
) -> None:
    torn = dirs.dlq / f"{'a' * 22}.json"
    torn.write_text('{"task_id": "aaaa')

    assert len(tm.json("dlq", "ls", "--json")) == 3  # the reader skips it
    proc = tm("dlq", "requeue", "--all", "--json")

    assert proc.returncode == 0
    assert sorted(json.loads(proc.stdout)["requeued"]) == sorted(dead)
    assert not torn.exists()
    assert str(torn) in proc.stderr and "quarantined" in proc.stderr


@pytest.mark.slow
def test_a_requeued_task_runs_on_an_already_running_worker_pool(
    tm: Tm, flows: FlowFiles, tmp_path: Path
) -> None:
    # Given a running pool and a task that failed its only attempt
    marker = tmp_path / "marker"
    flow = flows.write("fixable", "tm_test_hooks.fail_unless_file", retry={"max_attempts": 1})
    log = tmp_path / "workers.log"
    tm.start("workers", "start", "-n", "1", "--lease-s", "5", stdout=log)
    task_id = tm("enqueue", flow, "-i", json.dumps({"marker": str(marker)})).stdout.strip()
    assert tm("task", "wait", task_id, "--timeout", "30").returncode == 1
    # When the cause is fixed and the task is requeued
    marker.touch()
    assert tm.json("dlq", "requeue", task_id, "--json") == {"requeued": [task_id]}
    # Then the running pool picks it up and it succeeds
    done = tm("task", "wait", task_id, "--timeout", "30", "--json")
    assert done.returncode == 0, done.stdout + log.read_text()
    assert json.loads(done.stdout)["result"]["ok"] is True
    assert any(e.get("event") == "task succeeded" for e in json_lines(log))
