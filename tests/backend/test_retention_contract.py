"""Guarantee 10 (retention) of the Backend contract, against every backend, on an injected clock.

The default policy applies (the factories open with an empty environment): results go 7 days
after they finished, idempotency keys 1 day after their task finished, dead-letter audit copies
after 30 days; dead letters stay. A record may outlive its TTL by up to an hour (the file
backend removes results by the hour).
"""

from __future__ import annotations

import time

import pytest

from backend_testing import LEASE_S, Subject
from tm_testing import FakeClock
from tracemind.backend.retention import DAY_S
from tracemind.queue.protocol import TaskStatus

HOUR_S = 3600.0
RESULT_TTL_S = 7 * DAY_S
KEY_TTL_S = DAY_S
AUDIT_TTL_S = 30 * DAY_S


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock that starts at the real time: a store may age records by times that the
    system stamps (the file backend uses file modification times), so both must agree at the
    start; from there on only the fake clock moves."""
    return FakeClock(time.time())


def _status(subject: Subject, task_id: str) -> TaskStatus | None:
    info = subject.backend.queue.find(task_id)
    return None if info is None else info.status


def test_a_result_is_removed_after_its_ttl_and_not_before(subject: Subject) -> None:
    task_id = subject.succeed()
    start_s = subject.clock()

    before = subject.backend.prune(now_s=start_s + RESULT_TTL_S - HOUR_S)
    assert before["results"] == 0 and _status(subject, task_id) is TaskStatus.SUCCEEDED

    after = subject.backend.prune(now_s=start_s + RESULT_TTL_S + HOUR_S + 60)
    assert after["results"] == 1 and _status(subject, task_id) is None


def test_prune_runs_on_the_backends_clock_when_no_time_is_given(subject: Subject) -> None:
    task_id = subject.succeed()
    subject.clock.advance(RESULT_TTL_S - HOUR_S)
    assert subject.backend.prune()["results"] == 0
    subject.clock.advance(2 * HOUR_S + 60)
    assert subject.backend.prune()["results"] == 1
    assert _status(subject, task_id) is None


def test_a_pruned_task_never_runs_again(subject: Subject) -> None:
    # Given a succeeded task whose result was pruned
    task_id = subject.succeed()
    subject.clock.advance(RESULT_TTL_S + 2 * HOUR_S)
    assert subject.backend.prune()["results"] == 1
    # When recovery runs, from this view and another, long after every lease
    other = subject.reopen()
    subject.clock.advance(LEASE_S + 1)
    recovered = subject.backend.queue.recover() + other.queue.recover(dead_consumers=["c1"])
    # Then nothing came back: no consumer leases it, nobody reports it
    assert recovered == 0
    assert subject.backend.queue.lease("c2", LEASE_S) is None
    assert other.queue.lease("c3", LEASE_S) is None
    assert other.queue.find(task_id) is None
    assert subject.backend.queue.stats().pending == 0


def test_a_key_goes_after_its_ttl_and_before_its_result(subject: Subject) -> None:
    task_id = subject.succeed("k")
    start_s = subject.clock()

    assert subject.backend.prune(now_s=start_s + KEY_TTL_S - HOUR_S)["keys"] == 0

    removed = subject.backend.prune(now_s=start_s + KEY_TTL_S + HOUR_S)
    assert (removed["keys"], removed["results"]) == (1, 0)
    assert _status(subject, task_id) is TaskStatus.SUCCEEDED


def test_the_key_of_a_task_still_waiting_is_never_removed(subject: Subject) -> None:
    task_id = subject.submit("k")

    assert subject.backend.prune(now_s=subject.clock() + 60 * DAY_S)["keys"] == 0

    again = subject.backend.submitter(3600.0).submit(subject.snapshot, {}, idempotency_key="k")
    assert (again.task_id, again.duplicate) == (task_id, True)


def test_audit_copies_go_after_their_ttl_and_dead_letters_stay(subject: Subject) -> None:
    # Given one purged and one requeued dead letter (two audit copies), and one still dead
    purged, requeued, dead = subject.kill(), subject.kill(), subject.kill()
    assert subject.backend.dead_letters.purge(purged)
    assert subject.backend.dead_letters.requeue(requeued)
    start_s = subject.clock()
    # Then the copies stay for their TTL, then go; the dead letter stays
    assert subject.backend.prune(now_s=start_s + AUDIT_TTL_S - HOUR_S)["dlq_audit"] == 0
    assert subject.backend.prune(now_s=start_s + AUDIT_TTL_S + HOUR_S)["dlq_audit"] == 2
    subject.backend.prune(now_s=start_s + 365 * DAY_S)
    assert [e["task_id"] for e in subject.backend.dead_letters.newest_first()] == [dead]
    assert _status(subject, requeued) is TaskStatus.PENDING


def test_a_dry_run_counts_what_a_prune_removes_and_removes_nothing(subject: Subject) -> None:
    # Given a result, a key and an audit copy, all expired a year later
    results = [subject.succeed("k"), subject.succeed()]
    assert subject.backend.dead_letters.purge(subject.kill())
    later_s = subject.clock() + 365 * DAY_S
    # When a dry run looks, then it counts each, and everything is still there
    counted = subject.backend.prune(now_s=later_s, dry_run=True)
    assert (counted["results"], counted["keys"], counted["dlq_audit"]) == (2, 1, 1)
    assert [_status(subject, t) for t in results] == [TaskStatus.SUCCEEDED] * 2
    assert subject.backend.prune(now_s=later_s, dry_run=True) == counted
    # When a prune runs, then it removes what the dry run counted
    assert subject.backend.prune(now_s=later_s) == counted
    assert [_status(subject, t) for t in results] == [None, None]


def test_a_prune_removes_at_most_its_budget(subject: Subject) -> None:
    results = [subject.succeed() for _ in range(5)]
    later_s = subject.clock() + 365 * DAY_S

    first = subject.backend.prune(now_s=later_s, budget=2)
    assert sum(first.values()) == 2
    assert sum(subject.backend.prune(now_s=later_s, budget=10).values()) == 3
    assert [_status(subject, t) for t in results] == [None] * 5


def test_concurrent_prunes_remove_each_record_once(subject: Subject) -> None:
    import threading

    [subject.succeed() for _ in range(10)]
    subject.backend.maintain()  # (the writer's own process settles what it wrote, as it idles)
    later_s = subject.clock() + 365 * DAY_S
    views = [subject.reopen() for _ in range(3)]
    totals: list[int] = []

    def prune(index: int) -> None:
        totals.append(views[index].prune(now_s=later_s)["results"])

    threads = [threading.Thread(target=prune, args=(i,)) for i in range(len(views))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sum(totals) == 10
    assert subject.backend.prune(now_s=later_s)["results"] == 0
