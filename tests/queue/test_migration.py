"""Moving a queue directory of the first (flat) layout to the bucketed one, with a crash
injected after every single step: a rerun finishes the job, and every task then runs exactly
as it would have (waiting ones once, succeeded ones never)."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tm_testing import FakeClock, make_task, pending_names
from tracemind.backend.file.stores import Stores, open_stores
from tracemind.config import DataDirs
from tracemind.fsutil import dump_json
from tracemind.queue.names import InflightName, PendingName
from tracemind.queue.records import completion_entry

LEASE_S = 30.0


class _Crash(BaseException):
    """Stands for a SIGKILL between two renames (nothing on the way handles it)."""


def _flat_queue(dirs: DataDirs, clock: FakeClock) -> dict[str, list[str]]:
    """A queue directory as the first layout wrote it; returns the task ids by expectation."""
    queue = dirs.queue
    for folder in ("pending", "inflight", "done", "tmp"):
        (queue / folder).mkdir(parents=True, exist_ok=True)
    now_ms = int(clock() * 1000)
    expect: dict[str, list[str]] = {"run": [], "never": []}

    def write(path: Path, record: dict[str, Any], completion: dict[str, Any] | None = None) -> None:
        data = dump_json(record) + (b"\n" + dump_json(completion) if completion else b"")
        path.write_bytes(data)

    for n in range(3):  # waiting, due now
        task = make_task(clock, inputs={"n": n})
        write(queue / "pending" / str(PendingName(now_ms, task.task_id, 0)), task.record)
        expect["run"].append(task.task_id)
    delayed = make_task(clock, inputs={"delayed": True})  # due in 10 s
    write(queue / "pending" / str(PendingName(now_ms + 10_000, delayed.task_id, 0)), delayed.record)
    expect["run"].append(delayed.task_id)
    lost = make_task(clock)  # leased by a worker that died; its lease has expired
    write(
        queue / "inflight" / str(InflightName(lost.task_id, 1, "gone-0", "a" * 8, 1)), lost.record
    )
    expect["run"].append(lost.task_id)
    retried = make_task(clock)  # a retry wrote its new copy and died before deleting the lease
    lease_name = InflightName(retried.task_id, 1, "gone-1", "b" * 8, now_ms + 3_600_000)
    write(queue / "inflight" / str(lease_name), retried.record)
    write(queue / "pending" / str(PendingName(now_ms, retried.task_id, 1)), retried.record)
    expect["run"].append(retried.task_id)
    for n in range(2):  # succeeded; one with a stale pending copy a crash left behind
        done = make_task(clock)
        completion = completion_entry(1, "c" * 8, {"ok": n}, clock())
        write(queue / "done" / f"{done.task_id}.json", done.record, completion)
        if n == 1:
            write(queue / "pending" / str(PendingName(now_ms, done.task_id, 1)), done.record)
        expect["never"].append(done.task_id)
    return expect


def _migrate_crashing_after(stores: Stores, steps: int, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Run the migration, dying right after its ``steps``-th rename; True if it finished."""
    real_rename = os.rename
    done = [0]

    def rename(source: Any, target: Any) -> None:
        if done[0] == steps:
            raise _Crash
        real_rename(source, target)
        done[0] += 1

    monkeypatch.setattr(os, "rename", rename)
    try:
        stores.queue.migrate()
    except _Crash:
        return False
    finally:
        monkeypatch.setattr(os, "rename", real_rename)
    return True


def _drain(stores: Stores, clock: FakeClock) -> Counter[str]:
    runs: Counter[str] = Counter()
    for _ in range(3):  # now, after the expired leases are recovered, after the delay
        stores.queue.recover()
        while (lease := stores.queue.lease("c", LEASE_S)) is not None:
            runs[lease.task_id] += 1
            stores.queue.ack(lease, {})
        clock.advance(LEASE_S + 15)
    return runs


def test_a_flat_queue_directory_keeps_working_without_migration(
    dirs: DataDirs, clock: FakeClock
) -> None:
    # Given a first-layout directory that nothing migrated (a consumer of this version meets it)
    expect = _flat_queue(dirs, clock)
    stores = open_stores(dirs, durable=False, clock=clock)
    # Then readers see its tasks and consumers run each waiting one once, the succeeded never
    for task_id in expect["never"]:
        info = stores.queue.find(task_id)
        assert info is not None and info.status.value == "succeeded"
    assert stores.queue.stats().pending >= 3
    assert _drain(stores, clock) == Counter(dict.fromkeys(expect["run"], 1)) + Counter(
        {t: 0 for t in expect["never"]}
    )


def test_migration_interrupted_after_any_step_then_rerun_loses_and_repeats_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Count the steps of an uninterrupted migration
    clock = FakeClock()
    dirs = DataDirs(
        tmp_path / "probe" / "queue", tmp_path / "probe" / "keys", tmp_path / "probe" / "dlq"
    )
    _flat_queue(dirs, clock)
    renames = Counter[str]()
    real_rename = os.rename

    def counting(source: Any, target: Any) -> None:
        real_rename(source, target)
        renames["n"] += 1

    monkeypatch.setattr(os, "rename", counting)
    open_stores(dirs, durable=False, clock=clock).queue.migrate()
    monkeypatch.setattr(os, "rename", real_rename)
    steps = renames["n"]
    assert steps >= 9  # 7 pending files, 2 done records (and the marker)

    for crash_after in range(steps + 1):
        # Given a first-layout directory whose migration dies after `crash_after` renames
        clock = FakeClock()
        root = tmp_path / f"crash-{crash_after}"
        dirs = DataDirs(root / "queue", root / "keys", root / "dlq")
        expect = _flat_queue(dirs, clock)
        stores = open_stores(dirs, durable=False, clock=clock)
        finished = _migrate_crashing_after(stores, crash_after, monkeypatch)
        assert finished == (crash_after >= steps)
        # When it is run again (as the next daemon start would)
        stores = open_stores(dirs, durable=False, clock=clock)
        stores.queue.migrate()
        # Then nothing is left in the first layout, and each task runs as it should
        leftovers = [p.name for p in (dirs.queue / "pending").iterdir() if p.is_file()]
        assert leftovers == [".bell"], crash_after
        assert not list((dirs.queue / "done").glob("*.json"))
        assert (dirs.queue / "layout-2").exists()
        runs = _drain(stores, clock)
        assert runs == Counter(dict.fromkeys(expect["run"], 1)), crash_after
        assert pending_names(stores.queue) == []
        for task_id in expect["never"]:
            info = stores.queue.find(task_id)
            assert info is not None and info.status.value == "succeeded", crash_after
