"""The census of ``pending/``: what it lets a reader skip, and who keeps it."""

from __future__ import annotations

import os
from typing import Any

import pytest

from tm_testing import FakeClock, make_task
from tracemind.backend.file import census
from tracemind.backend.file.stores import Stores
from tracemind.flows import FlowSnapshot
from tracemind.queue.names import new_task_id
from tracemind.submit import Submission


class ListingLog:
    """Wraps ``os.scandir`` and ``os.listdir`` (:meth:`install`): the directories listed."""

    def __init__(self) -> None:
        self.real = os.scandir
        self.real_listdir = os.listdir
        self.listed: list[str] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> ListingLog:
        monkeypatch.setattr(os, "scandir", self)
        monkeypatch.setattr(os, "listdir", self.listdir)
        return self

    def __call__(self, path: Any = ".") -> Any:
        self.listed.append(os.fspath(path))
        return self.real(path)

    def listdir(self, path: Any = ".") -> list[Any]:
        self.listed.append(os.fspath(path))
        return self.real_listdir(path)

    def buckets(self) -> list[str]:
        """The inner buckets of pending/ that were listed (``…/pending/{outer}/{inner}``)."""
        paths = [p.rstrip("/") for p in self.listed]
        return [p for p in paths if _is_outer(os.path.basename(os.path.dirname(p)))]


def _is_outer(name: str) -> bool:
    return len(name) == 7 and name.isdigit()


def _backlog(stores: Stores, clock: FakeClock, seconds: int, per_second: int) -> list[str]:
    """Tasks in ``seconds`` consecutive buckets (the fake clock is ahead of the real one, so
    their directories are settled as soon as the clock has moved past them)."""
    ids = []
    for _ in range(seconds):
        tasks = [make_task(clock) for _ in range(per_second)]
        stores.queue.enqueue(tasks)
        ids += [t.task_id for t in tasks]
        clock.advance(1.0)
    clock.advance(5.0)
    return ids


def test_finding_an_unknown_id_lists_no_bucket_the_census_counted(
    stores: Stores, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a backlog over 5 buckets that a serving process has counted
    ids = _backlog(stores, clock, seconds=5, per_second=20)
    stores.queue.refresh_census()
    # When ids of no task are looked up: one from long before the backlog, one made now
    log = ListingLog().install(monkeypatch)
    unknown = ["000000000000" + "0000" + "abcdef", new_task_id(clock())]
    found = [stores.queue.find(task_id) for task_id in unknown]
    # Then each is nowhere, and no bucket was listed to say so
    assert found == [None, None]
    assert log.buckets() == []
    # and one among the backlog's own ids is looked for only in the bucket its id falls in
    assert stores.queue.find(ids[50][:-6] + "ffffff") is None
    monkeypatch.undo()
    assert len(set(log.buckets())) == 1
    # while a task in one of them is still found (its bucket is listed), and so is a retried
    # copy of another in a bucket that changed since the census
    assert stores.queue.find(ids[42]) is not None
    lease = stores.queue.lease("c1", 30.0)
    assert lease is not None
    from tracemind.queue.protocol import Failure

    stores.queue.retry(lease, Failure("again"), 0.0)
    info = stores.queue.find(lease.task_id)
    assert info is not None and info.attempts == 1


def test_a_bucket_changed_since_the_census_is_listed_again(
    stores: Stores, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a counted backlog, then a task of an older id put back into its newest bucket
    # (as a recovery or a requeue would)
    ids = _backlog(stores, clock, seconds=3, per_second=5)
    stores.queue.refresh_census()
    newest = max(p for p in stores.queue.pending_dir.glob("*/*") if p.is_dir())
    old = make_task(FakeClock(clock() - 3600))
    target = newest / f"{int(newest.name) * 1000:013d}_{old.task_id}_1.json"
    target.write_bytes(b"{}")
    os.utime(newest, ns=(os.stat(newest).st_atime_ns, os.stat(newest).st_mtime_ns + 1))
    # When it is looked up, Then it is found: its bucket's mtime no longer matches the census
    log = ListingLog().install(monkeypatch)
    info = stores.queue.find(old.task_id)
    monkeypatch.undo()
    assert info is not None and info.attempts == 1
    assert str(newest) in log.buckets()
    assert len(ids) == 15


def test_writers_keep_the_census_of_a_queue_no_daemon_serves(
    stores: Stores, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given producers writing batches while no daemon serves the queue (each writer brings the
    # census up to date when it is older than CENSUS_WRITER_AGE_S: here, every time)
    from tracemind.backend.file import queue as file_backend

    monkeypatch.setattr(file_backend, "CENSUS_WRITER_AGE_S", 0.0)
    for _ in range(6):
        stores.queue.enqueue([make_task(clock) for _ in range(50)])
        clock.advance(1.0)
    monkeypatch.undo()
    clock.advance(5.0)
    # When a reader counts the queue
    log = ListingLog().install(monkeypatch)
    stats = stores.queue.stats()
    monkeypatch.undo()
    # Then the counts are exact, and only the bucket written after the last writer's census
    # was listed (the reader writes nothing)
    assert (stats.pending, stats.delayed, stats.damaged) == (300, 0, 0)
    assert len(log.buckets()) == 1


def test_a_writer_within_seconds_of_the_census_lists_nothing_for_it(
    stores: Stores, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a queue whose census a writer has just brought up to date
    from tracemind.backend.file import queue as file_backend

    monkeypatch.setattr(file_backend, "CENSUS_WRITER_AGE_S", 60.0)  # (a slow machine)
    _backlog(stores, clock, seconds=3, per_second=10)
    stores.queue.keep_census()
    # When another task is enqueued right after, Then no directory is listed for the census
    log = ListingLog().install(monkeypatch)
    stores.queue.enqueue([make_task(clock)])
    monkeypatch.undo()
    assert log.listed == []


def test_a_writer_lists_at_most_its_budget_of_names_for_the_census(
    stores: Stores, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a backlog of 6 settled buckets of 20 tasks, no census, and a budget of 30 names
    from tracemind.backend.file import queue as file_backend

    _backlog(stores, clock, seconds=6, per_second=20)
    (stores.queue.root / "census.json").unlink()
    monkeypatch.setattr(file_backend, "CENSUS_WRITER_BUDGET", 30)
    # When a writer keeps the census, Then it lists two buckets (stopping once past 30 names)
    log = ListingLog().install(monkeypatch)
    stores.queue.keep_census()
    monkeypatch.undo()
    assert len(log.buckets()) == 2


def test_a_keyed_batch_keeps_the_census_too(
    stores: Stores, clock: FakeClock, echo_snapshot: FlowSnapshot
) -> None:
    # Given settled buckets that no census covers yet
    _backlog(stores, clock, seconds=3, per_second=10)
    (stores.queue.root / "census.json").unlink()
    # When a batch of keyed tasks only is submitted (staged, linked, published)
    items = [Submission({}, f"k{n}") for n in range(3)]
    stores.submitter(60.0).submit_many(echo_snapshot, items)
    # Then the census counts the settled buckets
    cached = census.load(str(stores.queue.root))
    assert cached is not None and len(cached) == 3
