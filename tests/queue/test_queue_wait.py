"""An idle consumer's wait: woken at once by a new task (a writer of many calls rings at most
every few ms), bounded by its timeout otherwise."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from tm_testing import make_task, wait_until
from tracemind.backend.file.pack_writer import RING_GAP_S
from tracemind.backend.file.packs import PACK_TASKS
from tracemind.backend.file.queue import FileQueue
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


def _spy_on_the_bell(queue: FileQueue) -> list[float]:
    """When each ring of ``queue``'s writer rang (``time.monotonic``), as it rings."""
    rings: list[float] = []
    ring = queue.waiting.ring

    def spied() -> None:
        rings.append(time.monotonic())
        ring()

    queue.waiting.ring = spied  # type: ignore[method-assign]
    return rings


def test_a_writer_of_many_calls_rings_at_most_every_gap_and_rings_after_its_last_call(
    dirs: DataDirs,
) -> None:
    # Given a writer that has made more than a pack's worth of one-task calls
    stores = open_stores(dirs, durable=False)
    rings = _spy_on_the_bell(stores.queue)
    for _ in range(PACK_TASKS + 1):
        stores.queue.enqueue([make_task(time.time)])
    # When it makes 200 more, as fast as it can
    started_s = time.monotonic()
    for _ in range(199):
        stores.queue.enqueue([make_task(time.time)])
    last_started_s = time.monotonic()
    stores.queue.enqueue([make_task(time.time)])
    took_s = time.monotonic() - started_s
    # Then it rang far less than once a call: about once a gap (a ring late from the helper
    # thread and one on a call may meet: twice a gap at most)
    rang = [ring_s for ring_s in rings if ring_s >= started_s]
    assert len(rang) <= 2 * (took_s / RING_GAP_S + 1) < 200
    # And a ring comes after its last call began, without any further call
    wait_until(lambda: rings and rings[-1] >= last_started_s, 10, "a ring after the last call")


def test_closing_a_writer_rings_at_once_the_ring_it_left_for_later(dirs: DataDirs) -> None:
    # Given a writer of many calls whose last call left its ring for later
    stores = open_stores(dirs, durable=False)
    rings = _spy_on_the_bell(stores.queue)
    for _ in range(PACK_TASKS + 1):
        stores.queue.enqueue([make_task(time.time)])
    stores.queue.enqueue([make_task(time.time)])
    last_started_s = time.monotonic()
    stores.queue.enqueue([make_task(time.time)])  # (within a gap of the one before)
    # When it closes
    stores.queue.packs.close()
    # Then the bell has rung for its last call already
    assert rings and rings[-1] >= last_started_s


def test_a_child_forked_by_a_writer_rings_for_its_own_calls(dirs: DataDirs) -> None:
    # Given a writer of many calls whose last call left its ring for later (to its helper
    # thread, which a child made by fork does not have)
    stores = open_stores(dirs, durable=False)
    rings = _spy_on_the_bell(stores.queue)
    for _ in range(PACK_TASKS + 2):
        stores.queue.enqueue([make_task(time.time)])
    # When it forks a child that makes two calls in a row
    pid = os.fork()
    if pid == 0:  # (the child: its exit status says whether a ring followed its last call)
        status = 1
        try:
            stores.queue.enqueue([make_task(time.time)])
            last_started_s = time.monotonic()
            stores.queue.enqueue([make_task(time.time)])
            deadline_s = time.monotonic() + 10
            while not (rings and rings[-1] >= last_started_s) and time.monotonic() < deadline_s:
                time.sleep(0.001)
            status = 0 if rings and rings[-1] >= last_started_s else 2
        finally:
            os._exit(status)
    # Then the bell rings after the child's last call, without any further call
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
