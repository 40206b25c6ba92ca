"""File-backend specifics: the on-disk names, and the copies a crash can leave behind.

A crash between two steps of a state change leaves two files for one task. These tests build
exactly those leftovers and check that recovery and leasing keep the task running once.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import pytest

from tm_testing import FakeClock, ListingLog, make_task, pending_names, pending_path
from tracemind.backend.file.queue import FileQueue
from tracemind.backend.file.stores import Stores, open_stores
from tracemind.config import DataDirs
from tracemind.fsutil import dump_json, read_fd
from tracemind.queue.names import RANDOM_DIGITS_AT, InflightName, PendingName
from tracemind.queue.protocol import Failure, Lease, LeaseLost, NewTask, TaskStatus
from tracemind.queue.records import dead_entry, with_failure

LEASE_S = 30.0


def _lease(queue: FileQueue, consumer: str = "c1") -> Lease:
    lease = queue.lease(consumer, LEASE_S)
    assert lease is not None
    return lease


def _names(directory: Any) -> list[str]:
    return sorted(os.listdir(directory)) if directory.exists() else []


def test_state_lives_in_file_names_with_wall_clock_deadlines(
    stores: Stores, clock: FakeClock
) -> None:
    task = make_task(clock)
    stores.queue.enqueue([task])
    [pending] = pending_names(stores.queue)
    assert PendingName.parse(pending) == PendingName(int(clock() * 1000), task.task_id, 0)

    _lease(stores.queue, "pool-0-ab")

    [inflight] = _names(stores.queue.inflight_dir)
    name = InflightName.parse(inflight)
    assert name is not None
    assert (name.task_id, name.attempt, name.consumer) == (task.task_id, 1, "pool-0-ab")
    assert name.deadline_ms == int((clock() + LEASE_S) * 1000)
    assert pending_names(stores.queue) == []


def test_a_stale_pending_copy_of_a_succeeded_task_is_discarded_not_leased(
    stores: Stores, clock: FakeClock, logs: list[dict[str, Any]]
) -> None:
    # Given a task that succeeded, and a pending copy of an earlier delivery of it (as a recovery
    # leaves when it returns a lease whose late ack then writes done/)
    queue = stores.queue
    task = make_task(clock)
    queue.enqueue([task])
    first = pending_path(queue, PendingName(int(clock() * 1000), task.task_id, 0))
    stale = pending_path(queue, PendingName(int(clock() * 1000), task.task_id, 1))
    shutil.copy(first, queue.tmp_dir / "copy")
    queue.ack(_lease(queue), {"ok": 1})
    os.rename(queue.tmp_dir / "copy", stale)
    # When a consumer looks for work
    lease = queue.lease("c2", LEASE_S)
    # Then the copy is not delivered, it is removed, and the task stays succeeded
    assert lease is None
    assert pending_names(queue) == []
    info = queue.find(task.task_id)
    assert info is not None and info.status is TaskStatus.SUCCEEDED
    assert any("stale copy of a succeeded task" in e["event"] for e in logs)


def test_a_stale_inflight_copy_of_a_succeeded_task_is_discarded_by_recovery(
    stores: Stores, clock: FakeClock
) -> None:
    # Given a succeeded task and an expired inflight copy of it (ack crashed before the unlink)
    queue = stores.queue
    task = make_task(clock)
    queue.enqueue([task])
    lease = _lease(queue)
    inflight = queue.inflight_dir / str(lease.handle)
    shutil.copy(inflight, queue.tmp_dir / "copy")
    queue.ack(lease, {"ok": 1})
    os.rename(queue.tmp_dir / "copy", inflight)
    # When its lease expires and recovery runs
    clock.advance(LEASE_S + 1)
    queue.recover()
    # Then it is not returned to pending
    assert _names(queue.inflight_dir) == []
    assert pending_names(queue) == []
    assert queue.lease("c2", LEASE_S) is None
    info = queue.find(task.task_id)
    assert info is not None and info.status is TaskStatus.SUCCEEDED


def test_retry_crash_window_runs_the_task_once_more_not_twice(
    stores: Stores, clock: FakeClock
) -> None:
    # Given a retry that rewrote the leased file with the failure and crashed before moving it
    # back to pending/ (the one window a retry has: there is never a second copy)
    from tracemind.fsutil import replace_content

    queue = stores.queue
    task = make_task(clock)
    queue.enqueue([task])
    lease = _lease(queue, "dead-0")
    record = with_failure(lease.record, lease.attempt, Failure("boom"), clock())
    leased = queue.inflight_dir / str(lease.handle)
    replace_content(leased, dump_json(record), tmp_dir=queue.tmp_dir, durable=False)
    # When its consumer is declared dead and recovery runs
    queue.recover(["dead-0"])
    # Then the task is delivered once more, as attempt 2, with the failure in its history
    again = _lease(queue, "c3")
    assert (again.task_id, again.attempt) == (task.task_id, 2)
    assert [h["error"] for h in again.record["history"]] == ["boom"]
    assert queue.lease("c3", LEASE_S) is None
    queue.ack(again, {})
    clock.advance(LEASE_S + 1)
    assert queue.recover() == 0
    assert queue.lease("c3", LEASE_S) is None


def test_a_retry_whose_lease_was_lost_does_not_bring_the_file_back(
    stores: Stores, clock: FakeClock
) -> None:
    # Given a lease that expired and was returned to the queue while its worker was paused
    queue = stores.queue
    task = make_task(clock)
    queue.enqueue([task])
    lease = _lease(queue, "paused-0")
    clock.advance(LEASE_S + 1)
    assert queue.recover() == 1
    # When the paused worker resumes and retries its attempt
    with pytest.raises(LeaseLost):
        queue.retry(lease, Failure("late"), 0.0)
    # Then there is still one copy of the task, pending
    assert len(pending_names(queue)) == 1 and _names(queue.inflight_dir) == []


def test_dead_letter_crash_window_discards_the_stale_inflight_copy(
    stores: Stores, clock: FakeClock
) -> None:
    # Given a dead-letter that wrote the DLQ entry and crashed before removing the inflight file
    queue = stores.queue
    task = make_task(clock, max_attempts=3)
    queue.enqueue([task])
    lease = _lease(queue, "dead-0")
    stores.dlq.put(task.task_id, dead_entry(lease.record, 1, lease.token, Failure("x"), clock()))
    # When recovery runs after the lease expired
    clock.advance(LEASE_S + 1)
    queue.recover()
    # Then the task is dead, and not back in the queue (it had attempts left)
    assert _names(queue.inflight_dir) == []
    assert pending_names(queue) == []
    info = queue.find(task.task_id)
    assert info is not None and info.status is TaskStatus.DEAD


def test_a_dlq_entry_of_another_delivery_does_not_hide_a_live_lease(
    stores: Stores, clock: FakeClock
) -> None:
    # Given a requeued task whose old DLQ entry (another token) is still there, leased and expired
    queue = stores.queue
    task = make_task(clock)
    queue.enqueue([task])
    lease = _lease(queue)
    stores.dlq.put(task.task_id, dead_entry(lease.record, 1, "ffffffff", Failure("old"), clock()))
    clock.advance(LEASE_S + 1)
    # When recovery runs, the lease goes back to pending (its token differs)
    assert queue.recover() == 1
    again = queue.lease("c2", LEASE_S)
    assert again is not None and again.attempt == 2


def test_recovery_dead_letter_crash_window_is_not_dead_lettered_twice(
    stores: Stores, clock: FakeClock
) -> None:
    # Given recovery that moved a lost last attempt to the DLQ and crashed before the unlink
    queue = stores.queue
    task = make_task(clock, max_attempts=1)
    queue.enqueue([task])
    lease = _lease(queue)
    clock.advance(LEASE_S + 1)
    stolen = InflightName(task.task_id, 1, "recovery", lease.token, int((clock() + 60) * 1000))
    os.rename(queue.inflight_dir / str(lease.handle), queue.inflight_dir / str(stolen))
    stores.dlq.put(task.task_id, dead_entry(lease.record, 1, lease.token, Failure("lost"), clock()))
    dead_at = stores.dlq.get(task.task_id)
    # When the recovery lease expires too
    clock.advance(61)
    queue.recover()
    # Then the copy is discarded and the DLQ entry is the original one
    assert _names(queue.inflight_dir) == []
    assert stores.dlq.get(task.task_id) == dead_at
    assert queue.lease("c2", LEASE_S) is None


def test_leftover_temporary_files_are_swept_and_never_count(
    stores: Stores, clock: FakeClock
) -> None:
    queue = stores.queue
    queue.prepare()
    old = queue.tmp_dir / "x.json.1234abcd.tmp"
    old.write_bytes(b'{"half')
    os.utime(old, (0, 0))
    fresh = queue.tmp_dir / "y.json.1234abcd.tmp"
    fresh.write_bytes(b'{"half')
    (queue.pending_dir / ".hidden.tmp").write_bytes(b"{")

    assert queue.stats().to_dict()["pending"] == 0
    FileQueue(queue.root, stores.dlq, durable=False, clock=clock).prepare()

    assert not old.exists()
    assert fresh.exists()  # a writer may still be busy with it
    assert queue.stats().damaged == 0


def test_ack_after_the_lease_was_recovered_still_fences_the_returned_copy(
    stores: Stores, clock: FakeClock, logs: list[dict[str, Any]]
) -> None:
    # Given a slow consumer whose lease expired and was returned to pending
    queue = stores.queue
    task = make_task(clock)
    queue.enqueue([task])
    lease = _lease(queue)
    clock.advance(LEASE_S + 1)
    assert queue.recover() == 1
    # When it finishes and acknowledges anyway
    queue.ack(lease, {"late": True})
    # Then the returned copy is never delivered
    assert queue.lease("c2", LEASE_S) is None
    info = queue.find(task.task_id)
    assert info is not None and info.status is TaskStatus.SUCCEEDED
    assert any("after its lease was lost" in e["event"] for e in logs)


def test_a_durable_batch_is_synced_once_not_once_per_task(
    dirs: Any, clock: FakeClock, monkeypatch: pytest.MonkeyPatch, echo_snapshot: Any
) -> None:
    # Given a durable queue and counters on every kind of sync
    from tracemind import fsutil
    from tracemind.backend.file import pack_writer, packs
    from tracemind.backend.file.stores import open_stores
    from tracemind.submit import Submission

    calls: dict[str, int] = {"fsync": 0, "fdatasync": 0, "syncfs": 0}
    real_fsync, real_fdatasync, real_syncfs = os.fsync, os.fdatasync, fsutil.sync_filesystem

    def count(name: str, real: Any) -> Any:
        def counted(*args: Any) -> Any:
            calls[name] += 1
            return real(*args)

        return counted

    monkeypatch.setattr(os, "fsync", count("fsync", real_fsync))
    monkeypatch.setattr(os, "fdatasync", count("fdatasync", real_fdatasync))
    monkeypatch.setattr(fsutil, "sync_filesystem", count("syncfs", real_syncfs))
    monkeypatch.setattr(pack_writer, "sync_filesystem", count("syncfs", real_syncfs))
    stores = open_stores(dirs, durable=True, clock=clock)
    stores.queue.prepare()
    # When 200 keyed tasks are submitted as one batch
    items = [Submission({"n": n}, f"key-{n}") for n in range(200)]
    results = stores.submitter(60).submit_many(echo_snapshot, items)
    # Then they are all there, made durable by two file-system syncs (the packs holding the
    # staged tasks, then the key records that point at them) and a few directory syncs
    assert stores.queue.stats().pending == 200 and not any(r.duplicate for r in results)
    if calls["syncfs"] == 2:
        assert calls["fdatasync"] == 0
    else:  # no syncfs(2) here: one data sync per pack (of 64 tasks at most; a staged task and
        # its key record are names of its pack: no data of their own)
        assert calls["fdatasync"] == -(-200 // packs.PACK_TASKS)
    # packs/, staging/, keys/, the new bucket and its two parents (and nothing per task)
    assert calls["fsync"] <= 6


def test_finding_a_task_that_waits_for_its_retry_does_not_list_the_backlog(
    stores: Stores, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a backlog spread over 50 seconds, and a task waiting 60 s for its retry
    queue = stores.queue
    for _ in range(50):
        queue.enqueue([make_task(clock)])
        clock.advance(1)
    retried = make_task(clock)
    queue.enqueue([retried])
    clock.advance(1)
    while (lease := queue.lease("c1", LEASE_S)) is not None and lease.task_id != retried.task_id:
        queue.retry(lease, Failure("not yet"), 0.0)  # (back into the backlog, due now)
    assert lease is not None
    queue.retry(lease, Failure("boom"), 60.0)
    listed = ListingLog().install(monkeypatch).listed
    # When it is looked up
    info = queue.find(retried.task_id)
    # Then it is found as delayed, from the newest buckets, not by listing all 50
    assert info is not None and info.status is TaskStatus.DELAYED and info.attempts == 1
    assert len(listed) <= 6, listed


def test_a_big_batch_fills_buckets_of_bounded_size_and_a_lease_reads_one(
    stores: Stores, clock: FakeClock, echo_snapshot: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given one batch of 25,000 tasks, all due at once
    from tracemind.backend.file.pending import CHUNK_TASKS
    from tracemind.submit import Submission

    results = stores.submitter(60).submit_many(
        echo_snapshot, [Submission({"n": n}) for n in range(25_000)]
    )
    # Then they fill three buckets of at most CHUNK_TASKS each
    buckets = sorted(p for p in stores.queue.pending_dir.glob("*/*") if p.is_dir())
    assert [len(os.listdir(b)) for b in buckets] == [CHUNK_TASKS, CHUNK_TASKS, 5_000]
    listed = ListingLog().install(monkeypatch).listed
    # And a lease reads only the first of them, and gets the batch's first task
    lease = stores.queue.lease("c1", LEASE_S)
    assert lease is not None and lease.task_id == results[0].task_id
    assert [p for p in listed if p.rstrip("/").endswith(buckets[0].name)] == listed[-1:]
    assert len(listed) <= 3  # pending/, the outer bucket, one inner bucket


def test_reading_a_task_file_reads_it_from_its_start_whatever_was_read_before(
    tmp_path: Any,
) -> None:
    # Given a task file whose descriptor was read before (a claim reads a new task first)
    path = tmp_path / "task.json"
    path.write_bytes(b'{"v": 1}\n' * 100)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.read(fd, 50)
        # When it is read whole, Then all of it comes back, twice
        assert read_fd(fd, str(path)) == path.read_bytes()
        assert read_fd(fd, str(path)) == path.read_bytes()
    finally:
        os.close(fd)


def test_a_past_bucket_is_listed_once_while_it_drains_and_the_current_one_again_when_stale(
    stores: Stores, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given five tasks due in one second, and a consumer that starts two seconds later
    queue = stores.queue
    tasks = [make_task(clock) for _ in range(5)]
    queue.enqueue(tasks)
    [bucket] = [str(p) for p in queue.pending_dir.glob("*/*") if p.is_dir()]
    clock.advance(2.0)
    log = ListingLog().install(monkeypatch)
    # When it drains them while far more than the relist interval passes between leases
    leased = []
    for _ in tasks:
        leased.append(_lease(queue).task_id)
        clock.advance(3 * queue.relist_interval_s)
    # Then it delivered them in order from one listing of their bucket: a bucket whose second
    # is over only empties
    assert leased == [task.task_id for task in tasks]
    assert log.buckets().count(bucket) == 1, log.listed

    # Given a consumer that listed the bucket of the current second (more may arrive in it)
    queue.relist_interval_s = 0.1
    first = make_task(clock)
    clock.advance(0.005)
    early = make_task(clock)
    clock.advance(0.005)
    second = make_task(clock)
    queue.enqueue([first, second])
    assert _lease(queue).task_id == first.task_id
    # When a task due before the one still listed lands after the listing (its writer read the
    # clock before the consumer listed), and the listing grows stale
    queue.enqueue([early])
    clock.advance(queue.relist_interval_s + 0.01)
    # Then the consumer lists again and takes the earlier task first
    assert [_lease(queue).task_id, _lease(queue).task_id] == [early.task_id, second.task_id]


def _share(task_id: str, count: int = 2) -> int:
    """The share of a pool of ``count`` that a task falls to (by its id's random digits)."""
    return int(task_id[RANDOM_DIGITS_AT:], 16) % count


def test_consumers_of_one_pool_lease_their_own_shares_first_then_what_is_left(
    stores: Stores, dirs: DataDirs, clock: FakeClock
) -> None:
    # Given 60 tasks due at once (one bucket), and the two consumers of a pool of two, each
    # with its own view of the directory
    tasks = [make_task(clock) for _ in range(60)]
    stores.queue.enqueue(tasks)
    consumers = [stores.queue, open_stores(dirs, durable=False, clock=clock).queue]
    for index, queue in enumerate(consumers):
        queue.take_share(index, 2)
    shares = [[t.task_id for t in tasks if _share(t.task_id) == index] for index in (0, 1)]
    assert min(map(len, shares)) > 0  # (60 random ids: both shares hold some)
    # When they lease in turn until both find nothing
    leased: list[list[str]] = [[], []]
    while True:
        got = [queue.lease(f"c{index}", LEASE_S) for index, queue in enumerate(consumers)]
        if got == [None, None]:
            break
        for index, lease in enumerate(got):
            if lease is not None:
                leased[index].append(lease.task_id)
    # Then every task was leased once
    assert sorted(leased[0] + leased[1]) == sorted(t.task_id for t in tasks)
    # And each consumer took its own share first, in enqueue order, and after it (the smaller
    # share drains first) the rest of the other's
    smaller = 0 if len(shares[0]) <= len(shares[1]) else 1
    larger = 1 - smaller
    assert leased[smaller][: len(shares[smaller])] == shares[smaller]
    assert leased[larger] == [t for t in shares[larger] if t not in leased[smaller]]
    rest = leased[smaller][len(shares[smaller]) :]
    assert rest == [t for t in shares[larger] if t in rest]


def test_a_consumer_whose_share_holds_no_due_task_takes_a_due_one_of_another_share(
    stores: Stores, clock: FakeClock
) -> None:
    # Given a bucket holding a task due now in share 1 and, due half a second later, one in
    # share 0 (a consumer of share 1 may be busy with a long task)
    def task_of_share(index: int, due_in_s: float) -> NewTask:
        while _share((task := make_task(clock, due_in_s=due_in_s)).task_id) != index:
            pass
        return task

    clock.now_s = float(int(clock.now_s)) + 0.1  # both due within one second
    due, later = task_of_share(1, 0.0), task_of_share(0, 0.5)
    stores.queue.enqueue([due, later])
    stores.queue.take_share(0, 2)
    # When the consumer of share 0 leases, Then it takes the due task, not none
    assert _lease(stores.queue).task_id == due.task_id
    assert stores.queue.lease("c1", LEASE_S) is None
    # And its own once due
    clock.advance(0.5)
    assert _lease(stores.queue).task_id == later.task_id


@pytest.mark.parametrize(("index", "count"), [(2, 2), (-1, 2), (0, 0)])
def test_a_share_outside_its_pool_is_refused(stores: Stores, index: int, count: int) -> None:
    with pytest.raises(ValueError, match="share"):
        stores.queue.take_share(index, count)
