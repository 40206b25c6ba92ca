"""An idle consumer's wait: woken at once by a new task, bounded by its timeout otherwise."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from tm_testing import make_task
from tracemind.backend.file.stores import open_stores
from tracemind.backend.file.watch import DirectoryWatch
from tracemind.config import DataDirs


def test_a_new_task_wakes_a_waiting_consumer_long_before_its_timeout(dirs: DataDirs) -> None:
    # Given an idle queue whose consumer has looked once (the watch now exists)
    stores = open_stores(dirs, durable=False)
    stores.queue.wait_for_work(5.0)
    assert stores.queue.lease("c-1", 30) is None

    # When another thread enqueues while the consumer waits with a 5 s timeout
    producer = open_stores(dirs, durable=False)
    timer = threading.Timer(0.2, lambda: producer.queue.enqueue([make_task(time.time)]))
    started = time.monotonic()
    timer.start()
    stores.queue.wait_for_work(5.0)
    waited_s = time.monotonic() - started
    timer.join()

    # Then it wakes for the task (not at the timeout), and the task is there to lease
    assert 0.15 <= waited_s < 2.5
    assert stores.queue.lease("c-1", 30) is not None


def test_without_events_the_wait_ends_at_its_timeout(tmp_path: Path) -> None:
    watch = DirectoryWatch(tmp_path)
    started = time.monotonic()
    watch.wait(0.3)
    assert 0.25 <= time.monotonic() - started < 2.0
    watch.close()


def test_a_delayed_task_bounds_the_wait_by_its_due_time(dirs: DataDirs) -> None:
    # Given a task due in 0.3 s, seen by the consumer's listing
    stores = open_stores(dirs, durable=False)
    stores.queue.wait_for_work(5.0)
    stores.queue.enqueue([make_task(time.time, due_in_s=0.3)])
    assert stores.queue.lease("c-1", 30) is None  # not due yet; now in the listing

    # When the consumer waits with a long timeout
    started = time.monotonic()
    stores.queue.wait_for_work(5.0)
    stores.queue.wait_for_work(5.0)  # the first wake may be the enqueue's own event

    # Then it is back when the task falls due, and leases it
    assert time.monotonic() - started < 2.5
    deadline = time.monotonic() + 2
    lease = None
    while lease is None and time.monotonic() < deadline:
        lease = stores.queue.lease("c-1", 30)
    assert lease is not None
