"""Durable acks: committed in groups, never reported before they are durable, and finished (not
run again) when the acking process dies between its ack and the commit."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tm_testing import FakeClock, make_task, pending_path, wait_until
from tracemind import fsutil
from tracemind.backend.file import commit
from tracemind.backend.file.commit import GroupCommitter
from tracemind.backend.file.queue import FileQueue
from tracemind.backend.file.stores import Stores, open_stores
from tracemind.config import DataDirs
from tracemind.fsutil import dump_json
from tracemind.queue.names import PendingName
from tracemind.queue.protocol import Lease, TaskStatus
from tracemind.queue.records import completion_entry
from tracemind.worker.consumer import Consumer
from tracemind.worker.runtime import Task

LEASE_S = 30.0


class Gate:
    """Holds every commit's sync until opened; counts the syncs that ran."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.entered = threading.Event()
        self.syncs = 0


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[Gate]:
    gate = Gate()
    real_sync = GroupCommitter._sync

    def gated_sync(self: GroupCommitter, files: list[int]) -> None:
        gate.entered.set()
        assert gate.open.wait(timeout=10), "test gate never opened"
        gate.syncs += 1
        real_sync(self, files)

    monkeypatch.setattr(GroupCommitter, "_sync", gated_sync)
    yield gate
    gate.open.set()  # never leave a commit thread blocked behind the test


@pytest.fixture
def durable(dirs: DataDirs, clock: FakeClock, logs: list[dict[str, Any]]) -> Stores:
    return open_stores(dirs, durable=True, clock=clock)


def _leases(queue: FileQueue, count: int, consumer: str = "c1") -> list[Lease]:
    queue.enqueue([make_task(queue.clock) for _ in range(count)])
    leases = [queue.lease(consumer, LEASE_S) for _ in range(count)]
    assert all(leases)
    return [lease for lease in leases if lease is not None]


def test_an_ack_is_reported_succeeded_only_once_it_is_durable(durable: Stores, gate: Gate) -> None:
    # Given a durable ack whose commit is held before its sync
    queue = durable.queue
    [lease] = _leases(queue, 1)
    queue.ack(lease, {"answer": 42})
    assert gate.entered.wait(timeout=10)
    # Then, until the sync ran, readers still see the task in flight
    info = queue.find(lease.task_id)
    assert info is not None and info.status is TaskStatus.INFLIGHT
    # When the sync completes
    gate.open.set()
    queue.flush()
    # Then it is succeeded, with its result, and its record kept beside the result
    info = queue.find(lease.task_id)
    assert info is not None and info.status is TaskStatus.SUCCEEDED
    assert info.record["result"] == {"answer": 42}
    assert info.record["input"] == {}
    assert os.listdir(queue.inflight_dir) == []


def test_acks_that_arrive_during_a_sync_share_the_next_one(durable: Stores, gate: Gate) -> None:
    # Given 40 acks, the first of which is being synced while the other 39 arrive
    queue = durable.queue
    leases = _leases(queue, 40)
    queue.ack(leases[0], {})
    assert gate.entered.wait(timeout=10)
    for lease in leases[1:]:
        queue.ack(lease, {})
    # When the first sync completes
    gate.open.set()
    queue.flush()
    # Then one more sync committed all the others
    assert gate.syncs == 2
    assert len(list(queue.done_dir.glob("*/*.json"))) == 40
    assert all(queue.find(lease.task_id).status is TaskStatus.SUCCEEDED for lease in leases)  # type: ignore[union-attr]


@pytest.fixture
def threads(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """The name of the thread that ran each commit's sync ("sync") and each rename of an
    acked file into done/ ("rename"), in order."""
    names: dict[str, list[str]] = {"sync": [], "rename": []}
    real_sync, real_rename = GroupCommitter._sync, commit.rename_into

    def noted_sync(self: GroupCommitter, files: list[int]) -> None:
        real_sync(self, files)
        names["sync"].append(threading.current_thread().name)

    def noted_rename(*args: Any) -> None:
        names["rename"].append(threading.current_thread().name)
        real_rename(*args)

    monkeypatch.setattr(GroupCommitter, "_sync", noted_sync)
    monkeypatch.setattr(commit, "rename_into", noted_rename)
    return names


def _streaming(
    stores: Stores, monkeypatch: pytest.MonkeyPatch, late_s: float
) -> tuple[FileQueue, list[Lease]]:
    """Two leases, in a process whose acks gather for 0.3 s while they stream in and whose
    commit thread renames a synced group after ``late_s``: the first acked and committed, then
    the second acked at once (so acks stream)."""
    monkeypatch.setattr(commit, "GATHER_S", 0.3)
    monkeypatch.setattr(commit, "LATE_S", late_s)
    queue = stores.queue
    leases = _leases(queue, 2)
    queue.ack(leases[0], {})
    queue.flush()
    queue.ack(leases[1], {})
    return queue, leases


def _succeeded(queue: FileQueue, task_id: str) -> bool:
    info = queue.find(task_id)
    return info is not None and info.status is TaskStatus.SUCCEEDED


def test_acks_streaming_in_are_synced_in_the_background_and_moved_by_their_consumer(
    durable: Stores, threads: dict[str, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an ack made while acks stream in, in a process whose commit thread would leave
    # its rename to its consumer for a minute
    queue, leases = _streaming(durable, monkeypatch, late_s=60.0)
    # Then it waits for more acks to share its sync, which the commit thread runs, and stays
    # in flight after it
    wait_until(lambda: len(threads["sync"]) == 2, 10, "the streaming ack's sync")
    assert threads["sync"][-1] == "ack-commit"
    assert not _succeeded(queue, leases[1].task_id)

    # When its consumer looks for its next task (once the sync has handed the group on)
    def looked() -> bool:
        return queue.lease("c1", LEASE_S) is None and _succeeded(queue, leases[1].task_id)

    wait_until(looked, 10, "the consumer to move the synced ack")
    # Then the consumer moved it into done/, on its own thread
    assert threads["rename"][-1] == threading.current_thread().name
    assert len(threads["sync"]) == len(threads["rename"]) == 2


def test_a_group_whose_consumer_runs_a_long_task_is_committed_by_the_commit_thread(
    durable: Stores, threads: dict[str, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an ack made while acks stream in, whose consumer then runs a long task
    queue, leases = _streaming(durable, monkeypatch, late_s=0.6)

    # Then it is committed without its consumer, by the commit thread
    wait_until(lambda: _succeeded(queue, leases[1].task_id), 10, "the late group's commit")
    assert threads["sync"][-1] == threads["rename"][-1] == "ack-commit"
    assert len(threads["sync"]) == len(threads["rename"]) == 2


class Succeeds:
    """A runtime whose every task succeeds at once."""

    def execute(self, task: Task) -> dict[str, Any]:
        return {}


def test_a_serving_consumer_whose_queue_runs_dry_commits_its_acks_before_it_waits(
    durable: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given three tasks, and a serving consumer (no burst) in a process whose acks, once they
    # stream in, would wait a minute for their sync and another for their move
    monkeypatch.setattr(commit, "GATHER_S", 60.0)
    monkeypatch.setattr(commit, "LATE_S", 60.0)
    queue = durable.queue
    tasks = [make_task(queue.clock) for _ in range(3)]
    queue.enqueue(tasks)
    consumer = Consumer(queue, Succeeds(), "c1", lease_s=LEASE_S)
    thread = threading.Thread(target=consumer.run, daemon=True)
    # When it runs them and finds nothing more to do
    thread.start()
    try:
        # Then every result shows before it waits for more: none waits for the commit thread
        wait_until(lambda: all(_succeeded(queue, t.task_id) for t in tasks), 10, "the results")
    finally:
        consumer.stopping.set()
        thread.join(timeout=10)
    assert not thread.is_alive()


def test_an_ack_whose_commit_never_ran_is_finished_by_recovery_not_run_again(
    durable: Stores, dirs: DataDirs, clock: FakeClock, gate: Gate, logs: list[dict[str, Any]]
) -> None:
    # Given a consumer that acked, then died before its commit ran (the sync never returns)
    [lease] = _leases(durable.queue, 1, consumer="dead-1")
    durable.queue.ack(lease, {"answer": 42})
    assert gate.entered.wait(timeout=10)
    # When another process recovers the dead consumer's leases
    other = open_stores(dirs, durable=False, clock=clock).queue
    assert other.recover(["dead-"]) == 1
    # Then the task is succeeded with the result of the attempt that ran, and never runs again
    info = other.find(lease.task_id)
    assert info is not None and info.status is TaskStatus.SUCCEEDED
    assert info.record["result"] == {"answer": 42} and info.attempts == 1
    assert other.lease("c2", LEASE_S) is None
    assert any("acknowledgement was interrupted" in e["event"] for e in logs)
    # And the late commit of the dead consumer changes nothing
    gate.open.set()
    durable.queue.flush()
    assert other.find(lease.task_id).status is TaskStatus.SUCCEEDED  # type: ignore[union-attr]


def test_a_pending_copy_that_carries_a_completion_is_finished_when_leased(
    stores: Stores, clock: FakeClock
) -> None:
    # Given a task file returned to pending just after its ack appended the completion line
    queue = stores.queue
    task = make_task(clock)
    completion = completion_entry(1, "abcd0123", {"ok": True}, clock())
    queue.prepare()
    path = pending_path(queue, PendingName(int(clock() * 1000), task.task_id, 1))
    path.write_bytes(dump_json(task.record) + b"\n" + dump_json(completion) + b"\n")
    # When a consumer leases
    # Then nothing runs, and the task is succeeded with the recorded result
    assert queue.lease("c1", LEASE_S) is None
    info = queue.find(task.task_id)
    assert info is not None and info.status is TaskStatus.SUCCEEDED
    assert info.record["result"] == {"ok": True}


def test_a_torn_completion_line_counts_as_no_ack(stores: Stores, clock: FakeClock) -> None:
    # Given a lease whose completion line was torn (a power loss during the append)
    queue = stores.queue
    [lease] = _leases(queue, 1)
    inflight = queue.inflight_dir / str(lease.handle)
    with open(inflight, "ab") as handle:
        handle.write(b'\n{"status":"succeeded","res')
    # When its lease expires and is recovered
    clock.advance(LEASE_S + 1)
    assert queue.recover() == 1
    # Then the task runs again as its next attempt, its record intact
    again = queue.lease("c2", LEASE_S)
    assert again is not None and again.task_id == lease.task_id and again.attempt == 2
    assert again.record == lease.record


def test_a_process_that_exits_normally_commits_its_acks_first(dirs: DataDirs) -> None:
    # Given a process that acks on a durable queue and returns without calling flush
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        from tm_testing import make_task
        from tracemind.config import DataDirs
        from tracemind.backend.file.stores import open_stores

        dirs = DataDirs(Path({str(dirs.queue)!r}), Path({str(dirs.idempotency)!r}),
                        Path({str(dirs.dlq)!r}))
        queue = open_stores(dirs, durable=True).queue
        queue.enqueue([make_task(queue.clock)])
        lease = queue.lease("c1", 30.0)
        queue.ack(lease, {{"answer": 42}})
        print(lease.task_id)
        """
    )
    tests_dir = str(Path(__file__).parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([tests_dir, *sys.path])}
    # When it exits
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    # Then its ack was committed on the way out
    task_id = done.stdout.strip()
    info = open_stores(dirs, durable=False).queue.find(task_id)
    assert info is not None and info.status is TaskStatus.SUCCEEDED
    assert info.record["result"] == {"answer": 42}


def test_an_ack_whose_file_a_recovery_returned_meanwhile_is_finished_by_the_next_lease(
    durable: Stores, clock: FakeClock, gate: Gate, logs: list[dict[str, Any]]
) -> None:
    # Given an ack appended, and then (its lease having lapsed) its file returned to pending by a
    # recovery that had read it just before the append, all before the commit's rename
    queue = durable.queue
    [lease] = _leases(queue, 1)
    queue.ack(lease, {"answer": 42})
    assert gate.entered.wait(timeout=10)
    returned = pending_path(queue, PendingName(int(clock() * 1000), lease.task_id, 1))
    os.rename(queue.inflight_dir / str(lease.handle), returned)
    # When the commit completes
    gate.open.set()
    queue.flush()
    # Then the lost race is logged, and the next lease finishes the task instead of running it
    assert any("after its lease was lost" in e["event"] for e in logs)
    assert queue.lease("c2", LEASE_S) is None
    info = queue.find(lease.task_id)
    assert info is not None and info.status is TaskStatus.SUCCEEDED
    assert info.record["result"] == {"answer": 42}


def test_a_failed_sync_reports_nothing_succeeded_and_leaves_the_acks_to_recovery(
    durable: Stores,
    dirs: DataDirs,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
    logs: list[dict[str, Any]],
) -> None:
    # Given a file system whose sync fails (an I/O error)
    def failing_sync(self: GroupCommitter, files: list[int]) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(GroupCommitter, "_sync", failing_sync)
    leases = _leases(durable.queue, 3, consumer="w-1")
    # When the acks are made and flushed
    for lease in leases:
        durable.queue.ack(lease, {"ok": True})
    durable.queue.flush()  # returns: a failed commit does not hang its callers
    # Then none is reported succeeded, and each failure is logged
    statuses = {durable.queue.find(lease.task_id).status for lease in leases}  # type: ignore[union-attr]
    assert statuses == {TaskStatus.INFLIGHT}
    assert sum("not committed" in e["event"] for e in logs) == 3
    # And once their consumer is declared dead, recovery finishes them with their results
    monkeypatch.undo()
    assert durable.queue.recover(["w-1"]) == 3
    for lease in leases:
        info = durable.queue.find(lease.task_id)
        assert info is not None and info.status is TaskStatus.SUCCEEDED


def test_acks_are_made_durable_by_a_flush_of_their_pack_not_of_the_file_system(
    durable: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given five leases of tasks enqueued as one batch (one pack holds their records), in a
    # process whose acks gather while they stream in
    monkeypatch.setattr(commit, "GATHER_S", 0.3)
    queue = durable.queue
    leases = _leases(queue, 5)
    flushed: list[int] = []
    syncs: list[int] = []  # the files flushed by each sync
    real_fdatasync, real_sync = os.fdatasync, GroupCommitter._sync

    def counting_fdatasync(fd: int) -> None:
        flushed.append(os.fstat(fd).st_ino)
        real_fdatasync(fd)

    def noted_sync(self: GroupCommitter, files: list[int]) -> None:
        before = len(flushed)
        real_sync(self, files)
        syncs.append(len(flushed) - before)

    monkeypatch.setattr(os, "fdatasync", counting_fdatasync)
    monkeypatch.setattr(GroupCommitter, "_sync", noted_sync)
    monkeypatch.setattr(
        fsutil, "sync_filesystem", lambda path: pytest.fail("an ack flushed the file system")
    )
    # When all five are acked and committed
    for lease in leases:
        queue.ack(lease, {})
    queue.flush()
    # Then each sync flushed their pack once, however many acks it carried (syncfs would also
    # have waited for every other process's writes), and all five are succeeded
    assert syncs and all(files == 1 for files in syncs), syncs
    assert len(syncs) < 5
    assert len(set(flushed)) == 1
    assert all(_succeeded(queue, lease.task_id) for lease in leases)
