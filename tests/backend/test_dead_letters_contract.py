"""Guarantee 9 (dead letters) of the Backend contract, against every backend."""

from __future__ import annotations

import threading
from collections.abc import Callable

from backend_testing import LEASE_S, Subject
from tracemind.backend.protocol import Backend
from tracemind.queue.protocol import TaskStatus


def _race(views: list[Backend], action: Callable[[Backend], bool]) -> list[bool]:
    """Run ``action`` on every view at once, one thread each; what each returned."""
    start = threading.Barrier(len(views), timeout=30)
    answers: list[bool | None] = [None] * len(views)

    def run(index: int) -> None:
        start.wait()
        answers[index] = action(views[index])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(views))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert None not in answers
    return [bool(a) for a in answers]


def test_dead_tasks_are_listed_newest_first_shown_and_counted(subject: Subject) -> None:
    first = subject.kill()
    subject.clock.advance(1)
    second = subject.kill()
    letters = subject.reopen().dead_letters

    assert [e["task_id"] for e in letters.newest_first()] == [second, first]
    assert [e["task_id"] for e in letters.newest_first(limit=1)] == [second]
    assert letters.count() == 2
    entry = letters.get(first)
    assert entry is not None
    assert (entry["error"], entry["attempts"]) == ("boom", 1)
    assert entry["traceback"] == "Traceback: boom"
    assert entry["dead_at"] == subject.clock() - 1
    assert [h["outcome"] for h in entry["history"]] == ["failed"]
    assert letters.get("0" * 26) is None
    info = subject.backend.queue.find(first)
    assert info is not None and info.status is TaskStatus.DEAD


def test_a_requeue_makes_the_task_pending_again_with_its_history(subject: Subject) -> None:
    task_id = subject.kill()

    assert subject.backend.dead_letters.requeue(task_id)

    assert subject.backend.dead_letters.get(task_id) is None
    assert subject.backend.dead_letters.count() == 0
    lease = subject.backend.queue.lease("c1", LEASE_S)
    assert lease is not None and (lease.task_id, lease.attempt) == (task_id, 1)
    assert [h["error"] for h in lease.record["history"]] == ["boom"]
    assert subject.backend.queue.lease("c1", LEASE_S) is None


def test_concurrent_requeues_of_one_entry_succeed_once_and_run_it_once(subject: Subject) -> None:
    task_id = subject.kill()

    answers = _race([subject.reopen() for _ in range(4)], lambda b: b.dead_letters.requeue(task_id))

    assert sorted(answers) == [False, False, False, True]
    leases = [subject.backend.queue.lease("c1", LEASE_S) for _ in range(2)]
    assert [lease.task_id if lease else None for lease in leases] == [task_id, None]


def test_a_requeue_and_a_purge_racing_take_the_entry_once(subject: Subject) -> None:
    task_id = subject.kill()
    views = [subject.reopen() for _ in range(4)]

    answers = _race(
        views,
        lambda b: (
            b.dead_letters.requeue(task_id) if views.index(b) % 2 else b.dead_letters.purge(task_id)
        ),
    )

    assert answers.count(True) == 1
    requeued = answers.index(True) % 2 == 1
    lease = subject.backend.queue.lease("c1", LEASE_S)
    assert (lease is not None and lease.task_id == task_id) is requeued
    assert subject.backend.dead_letters.get(task_id) is None


def test_a_purge_removes_the_entry_and_frees_its_key(subject: Subject) -> None:
    task_id = subject.kill("k")
    views = [subject.reopen() for _ in range(3)]

    answers = _race(views, lambda b: b.dead_letters.purge(task_id))

    assert sorted(answers) == [False, False, True]
    assert subject.backend.dead_letters.get(task_id) is None
    assert subject.backend.dead_letters.count() == 0
    assert subject.backend.queue.find(task_id) is None
    assert not subject.backend.dead_letters.requeue(task_id)
    again = subject.backend.submitter(3600.0).submit(subject.snapshot, {}, idempotency_key="k")
    assert not again.duplicate and again.task_id != task_id


def test_requeue_or_purge_of_an_unknown_task_changes_nothing(subject: Subject) -> None:
    kept = subject.kill()

    assert not subject.backend.dead_letters.requeue("0" * 26)
    assert not subject.backend.dead_letters.purge("0" * 26)
    assert [e["task_id"] for e in subject.backend.dead_letters.newest_first()] == [kept]
