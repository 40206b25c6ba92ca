"""The TaskQueue contract (see tracemind.queue.protocol), run against every backend of
``backend_testing.BACKEND_FACTORIES`` (guarantees 5-7 and those of the Backend contract are in
``tests/backend``).

Only the Protocol's verbs are used here; backend-specific crash windows live in
test_file_backend.py.
"""

from __future__ import annotations

import pytest

from tm_testing import QueueHarness, make_task
from tracemind.queue.protocol import Failure, LeaseLost, TaskStatus
from tracemind.queue.records import LOST_ATTEMPT

LEASE_S = 30.0


def test_lease_on_an_empty_queue_returns_none(harness: QueueHarness) -> None:
    assert harness.queue.lease("c1", LEASE_S) is None


def test_enqueued_task_is_leased_with_its_record_and_a_wall_clock_deadline(
    harness: QueueHarness,
) -> None:
    task = make_task(harness.clock, inputs={"name": "x"})
    harness.queue.enqueue([task])

    lease = harness.queue.lease("c1", LEASE_S)

    assert lease is not None
    assert (lease.task_id, lease.attempt, lease.consumer) == (task.task_id, 1, "c1")
    assert lease.record == task.record
    assert lease.deadline_s == pytest.approx(harness.clock() + LEASE_S, abs=0.001)


def test_a_leased_task_is_not_leased_again_by_another_consumer(harness: QueueHarness) -> None:
    harness.put()
    other = harness.reopen()

    assert harness.queue.lease("c1", LEASE_S) is not None
    assert other.lease("c2", LEASE_S) is None
    assert harness.queue.lease("c1", LEASE_S) is None


def test_tasks_are_leased_oldest_due_first(harness: QueueHarness) -> None:
    first = harness.put()
    harness.clock.advance(0.01)
    second = harness.put()
    early = make_task(harness.clock, due_in_s=-5.0)  # due before both
    harness.queue.enqueue([early])

    order = [harness.queue.lease("c1", LEASE_S) for _ in range(3)]

    assert [lease.task_id for lease in order if lease] == [early.task_id, first, second]


def test_renew_pushes_the_deadline_so_recovery_leaves_the_lease_alone(
    harness: QueueHarness,
) -> None:
    # Given a leased task whose lease is renewed before its deadline
    harness.put()
    lease = harness.queue.lease("c1", LEASE_S)
    assert lease is not None
    harness.clock.advance(20)
    harness.queue.renew(lease, LEASE_S)
    # When the original deadline passes
    harness.clock.advance(20)
    # Then recovery returns nothing and nobody else can lease it
    assert lease.deadline_s == pytest.approx(harness.clock() + 10, abs=0.001)
    assert harness.queue.recover() == 0
    assert harness.reopen().lease("c2", LEASE_S) is None
    info = harness.queue.find(lease.task_id)
    assert info is not None and info.status is TaskStatus.INFLIGHT


def test_renew_after_the_lease_was_recovered_raises_lease_lost(harness: QueueHarness) -> None:
    harness.put()
    lease = harness.queue.lease("c1", LEASE_S)
    assert lease is not None
    harness.clock.advance(LEASE_S + 1)
    assert harness.reopen().recover() == 1

    with pytest.raises(LeaseLost):
        harness.queue.renew(lease, LEASE_S)


def test_ack_stores_the_result_and_the_task_never_runs_again(harness: QueueHarness) -> None:
    task_id = harness.put()
    lease = harness.queue.lease("c1", LEASE_S)
    assert lease is not None
    harness.clock.advance(2)

    harness.queue.ack(lease, {"answer": 42})
    harness.queue.flush()  # durable, and so reported, by the time flush returns

    info = harness.queue.find(task_id)
    assert info is not None
    assert info.status is TaskStatus.SUCCEEDED
    assert info.attempts == 1
    assert info.record["result"] == {"answer": 42}
    assert info.finished_s == pytest.approx(harness.clock())
    harness.clock.advance(3600)
    assert harness.queue.recover(["c1"]) == 0
    assert harness.queue.lease("c1", LEASE_S) is None
    stats = harness.queue.stats()
    assert (stats.pending, stats.delayed, stats.inflight) == (0, 0, 0)
    assert stats.oldest_pending_age_s is None


def test_retry_makes_the_task_delayed_then_due_with_its_failure_recorded(
    harness: QueueHarness,
) -> None:
    # Given a task that failed its first attempt
    task_id = harness.put()
    lease = harness.queue.lease("c1", LEASE_S)
    assert lease is not None
    # When it is retried with a 5 s delay
    harness.queue.retry(lease, Failure("ValueError: boom", "Traceback ..."), 5.0)
    # Then it is delayed, not leasable, until the delay has passed
    info = harness.queue.find(task_id)
    assert info is not None and info.status is TaskStatus.DELAYED
    assert info.due_s == pytest.approx(harness.clock() + 5.0, abs=0.001)
    stats = harness.queue.stats()
    assert (stats.pending, stats.delayed, stats.inflight) == (0, 1, 0)
    assert harness.queue.lease("c1", LEASE_S) is None
    harness.clock.advance(5.0)
    info = harness.queue.find(task_id)
    assert info is not None and info.status is TaskStatus.PENDING
    second = harness.queue.lease("c2", LEASE_S)
    assert second is not None and second.task_id == task_id
    assert second.attempt == 2
    [failed] = second.record["history"]
    assert failed["attempt"] == 1
    assert failed["error"] == "ValueError: boom"
    assert failed["traceback"] == "Traceback ..."


def test_dead_letter_moves_the_task_out_of_the_queue_with_its_error(
    harness: QueueHarness,
) -> None:
    task_id = harness.put(max_attempts=1)
    lease = harness.queue.lease("c1", LEASE_S)
    assert lease is not None

    harness.queue.dead_letter(lease, Failure("RuntimeError: no", "Traceback (dead)"))

    info = harness.queue.find(task_id)
    assert info is not None and info.status is TaskStatus.DEAD
    assert info.attempts == 1
    assert info.record["error"] == "RuntimeError: no"
    assert info.record["traceback"] == "Traceback (dead)"
    assert [h["attempt"] for h in info.record["history"]] == [1]
    stats = harness.queue.stats()
    assert (stats.pending, stats.delayed, stats.inflight) == (0, 0, 0)
    harness.clock.advance(3600)
    assert harness.queue.recover() == 0
    assert harness.queue.lease("c1", LEASE_S) is None


def test_an_expired_lease_returns_to_pending_and_counts_as_an_attempt(
    harness: QueueHarness,
) -> None:
    # Given a consumer that leased a task and vanished
    task_id = harness.put()
    assert harness.queue.lease("c1", LEASE_S) is not None
    # When recovery runs before the deadline, nothing moves
    harness.clock.advance(LEASE_S - 1)
    assert harness.queue.recover() == 0
    # When it runs after the deadline
    harness.clock.advance(2)
    assert harness.reopen().recover() == 1
    # Then the task is pending with one attempt used, and its next delivery is attempt 2
    info = harness.queue.find(task_id)
    assert info is not None and info.status is TaskStatus.PENDING
    assert info.attempts == 1
    lease = harness.queue.lease("c2", LEASE_S)
    assert lease is not None and (lease.task_id, lease.attempt) == (task_id, 2)


def test_recover_returns_the_leases_of_dead_consumers_by_id_and_by_prefix(
    harness: QueueHarness,
) -> None:
    ids = [harness.put() for _ in range(4)]
    holders = ["pool1-0-ab12", "pool1-1-cd34", "pool12-0-ef56", "other-0-0000"]
    for consumer in holders:
        assert harness.queue.lease(consumer, LEASE_S) is not None

    # An id prefix ends with "-": "pool1-" must not match "pool12-…".
    assert harness.queue.recover(["pool1-"]) == 2
    assert harness.queue.recover(["other-0"]) == 0  # neither an exact id nor a prefix
    assert harness.queue.recover(["other-0-0000"]) == 1

    statuses = {task_id: harness.queue.find(task_id) for task_id in ids}
    pending = [t for t, info in statuses.items() if info and info.status is TaskStatus.PENDING]
    assert len(pending) == 3
    assert harness.queue.held_by("pool12-") == 1
    assert harness.queue.held_by("pool1-") == 0


def test_stats_counts_each_state_and_the_wall_clock_age_of_the_oldest_pending(
    harness: QueueHarness,
) -> None:
    harness.put()
    harness.clock.advance(10)
    harness.put()
    harness.put(due_in_s=60)

    stats = harness.queue.stats()
    assert (stats.pending, stats.delayed, stats.inflight, stats.damaged) == (2, 1, 0, 0)
    assert stats.oldest_pending_age_s == pytest.approx(10.0, abs=0.001)

    assert harness.queue.lease("c1", LEASE_S) is not None  # takes the oldest
    harness.clock.advance(7)
    stats = harness.queue.stats()
    assert (stats.pending, stats.delayed, stats.inflight) == (1, 1, 1)
    assert stats.oldest_pending_age_s == pytest.approx(7.0, abs=0.001)


def test_stats_of_an_empty_queue(harness: QueueHarness) -> None:
    stats = harness.queue.stats()
    assert (stats.pending, stats.delayed, stats.inflight) == (0, 0, 0)
    assert stats.oldest_pending_age_s is None


def test_find_reports_every_status(harness: QueueHarness) -> None:
    pending = harness.put()
    delayed = harness.put(due_in_s=100)
    inflight = harness.put()
    succeeded = harness.put()
    dead = harness.put()
    leases = {}
    for _ in range(4):
        lease = harness.queue.lease("c1", LEASE_S)
        assert lease is not None
        leases[lease.task_id] = lease
    harness.queue.ack(leases[succeeded], {"ok": True})
    harness.queue.flush()
    harness.queue.dead_letter(leases[dead], Failure("boom"))
    harness.queue.retry(leases[pending], Failure("again"), 0.0)

    found = {t: harness.queue.find(t) for t in (pending, delayed, inflight, succeeded, dead)}

    assert {t: info.status if info else None for t, info in found.items()} == {
        pending: TaskStatus.PENDING,
        delayed: TaskStatus.DELAYED,
        inflight: TaskStatus.INFLIGHT,
        succeeded: TaskStatus.SUCCEEDED,
        dead: TaskStatus.DEAD,
    }
    assert harness.queue.find("0" * 22) is None


def test_a_task_whose_last_attempt_is_lost_goes_to_the_dlq_with_lost_history(
    harness: QueueHarness,
) -> None:
    # Given a poison task that kills every consumer that takes it (max 2 attempts)
    task_id = harness.put(max_attempts=2)
    for attempt in (1, 2):
        lease = harness.queue.lease(f"c{attempt}", LEASE_S)
        assert lease is not None and lease.attempt == attempt
        # When its lease expires each time
        harness.clock.advance(LEASE_S + 1)
        assert harness.queue.recover() == 1
    # Then after the last attempt it is dead, with one history item per lost attempt
    info = harness.queue.find(task_id)
    assert info is not None and info.status is TaskStatus.DEAD
    assert info.attempts == 2
    history = info.record["history"]
    assert [h["attempt"] for h in history] == [1, 2]
    assert history[0]["error"] == LOST_ATTEMPT
    assert "lease expired" in info.record["error"]
    assert harness.queue.lease("c3", LEASE_S) is None


def test_a_task_enqueued_after_the_consumer_listed_is_leased_without_waiting(
    harness: QueueHarness,
) -> None:
    # Given a consumer that already looked at the queue (one task taken, one still listed)
    first = harness.put()
    harness.clock.advance(0.01)
    second = harness.put()
    consumer = harness.queue
    lease = consumer.lease("c1", LEASE_S)
    assert lease is not None and lease.task_id == first
    # When another process enqueues a task, with no time passing on the clock
    late = make_task(harness.clock)
    harness.reopen().enqueue([late])
    # Then the consumer leases both remaining tasks at once
    got = [consumer.lease("c1", LEASE_S), consumer.lease("c1", LEASE_S)]
    assert sorted(lease.task_id for lease in got if lease) == sorted([second, late.task_id])


def test_an_idle_consumer_sees_a_task_enqueued_after_its_empty_listing(
    harness: QueueHarness,
) -> None:
    consumer = harness.queue
    assert consumer.lease("c1", LEASE_S) is None
    late = make_task(harness.clock)

    harness.reopen().enqueue([late])

    lease = consumer.lease("c1", LEASE_S)
    assert lease is not None and lease.task_id == late.task_id


def test_a_batch_enqueue_of_many_tasks_delivers_each_once_in_order(
    harness: QueueHarness,
) -> None:
    tasks = []
    for _ in range(500):
        tasks.append(make_task(harness.clock))
        harness.clock.advance(0.01)
    harness.queue.enqueue(tasks)
    assert harness.queue.stats().pending == 500

    other = harness.reopen()
    leased = []
    for n in range(600):
        lease = (harness.queue if n % 2 else other).lease(f"c{n % 2}", LEASE_S)
        if lease is not None:
            leased.append(lease.task_id)

    assert leased == [t.task_id for t in tasks]


def test_consumers_with_shares_deliver_every_task_once_and_one_alone_takes_them_all(
    harness: QueueHarness,
) -> None:
    # Given 40 due tasks and the three consumers of a pool of three
    tasks = [make_task(harness.clock) for _ in range(40)]
    harness.queue.enqueue(tasks)
    pool = [harness.queue, harness.reopen(), harness.reopen()]
    for index, queue in enumerate(pool):
        queue.take_share(index, len(pool))
    # When the first two lease in turn until they find nothing (the third is busy)
    leased: list[str] = []
    while (leases := [q.lease(f"c{n}", LEASE_S) for n, q in enumerate(pool[:2])]) != [None, None]:
        leased += [lease.task_id for lease in leases if lease is not None]
    # Then every task was delivered once, the busy consumer's share included
    assert sorted(leased) == sorted(t.task_id for t in tasks)
    assert pool[2].lease("c2", LEASE_S) is None


def test_an_empty_batch_enqueues_nothing(harness: QueueHarness) -> None:
    harness.queue.enqueue([])
    assert harness.queue.stats().pending == 0
