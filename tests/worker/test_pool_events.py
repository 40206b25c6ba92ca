"""The pool's accounting of what its workers report: the events a worker writes, read back by
the pool (running task, step, outcome counts, duration histogram, idle), and lines it ignores."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tracemind.backend.location import Location
from tracemind.worker.activity import RunningTask
from tracemind.worker.events import EventWriter
from tracemind.worker.pool import (
    DURATION_BUCKETS_S,
    Outcomes,
    Slot,
    WorkerPool,
    events_pipe,
)
from tracemind.worker.runtime import Task
from tracemind.worker.settings import PoolSettings, WorkerSettings


class LiveProcess:
    """Stands in for a worker process that is still running."""

    pid = 12345
    returncode = None

    def poll(self) -> None:
        return None


def running(slot: Slot) -> RunningTask | None:
    """The task the pool shows the slot's worker running (read afresh after each step)."""
    return slot.running


@pytest.fixture
def pool_and_writer(tmp_path: Path) -> Iterator[tuple[WorkerPool, Slot, EventWriter]]:
    worker = WorkerSettings(Location.for_root(str(tmp_path)), False, "m:f", 30.0, None)
    pool = WorkerPool(PoolSettings(1, "pool", worker), queue=None)  # type: ignore[arg-type]
    slot = pool.slots[0]
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    slot.process, slot.events = LiveProcess(), read_fd  # type: ignore[assignment]
    yield pool, slot, EventWriter(write_fd, None)
    os.close(read_fd)
    os.close(write_fd)
    pool.close()


def test_the_pool_follows_a_task_from_start_to_outcome(
    pool_and_writer: tuple[WorkerPool, Slot, EventWriter],
) -> None:
    pool, slot, writer = pool_and_writer

    # When a worker reports a first attempt taken and its first step begun
    writer.started(Task("t1", "flow-a", 1, {}))
    writer.step("fetch")
    pool.read_events()

    # Then the pool shows the task running in that step, and counts the first attempt
    task = running(slot)
    assert task is not None
    assert (task.task_id, task.flow_id, task.step) == ("t1", "flow-a", "fetch")
    assert slot.took_task and not pool.all_idle()
    assert pool.outcomes.counts["first_attempts"] == 1

    # When the worker reports its outcome and that a look found nothing more
    writer.finished("dead-lettered", 0.3, 1, "RuntimeError: boom")
    writer.idle()
    pool.read_events()

    # Then the worker is idle and no longer busy, and the failure is counted and listed
    assert running(slot) is None and pool.all_idle()
    assert pool.outcomes.counts["dead-lettered"] == 1
    assert pool.outcomes.flows["flow-a"].counts["dead-lettered"] == 1
    [failure] = pool.activity.to_dict(now_s=0)["recent_failures"]
    assert (failure["task_id"], failure["error"]) == ("t1", "RuntimeError: boom")


def test_a_line_split_across_reads_and_foreign_lines(
    pool_and_writer: tuple[WorkerPool, Slot, EventWriter],
) -> None:
    pool, slot, writer = pool_and_writer
    line = b'{"event": "started", "attempt": 2, "task_id": "t2", "flow_id": null}\n'

    # Given a line that arrives in two parts, after lines that are not events
    os.write(writer.events_fd, b"not json\n[1, 2]\n" + line[:20])
    pool.read_events()
    assert running(slot) is None  # half a line is kept for later, garbage is skipped
    os.write(writer.events_fd, line[20:])
    pool.read_events()

    # Then the whole line counts once, as what it is
    task = running(slot)
    assert task is not None and task.task_id == "t2"
    assert pool.outcomes.counts["first_attempts"] == 0  # a second attempt


def test_many_events_in_one_read_count_once_each_beside_json_that_is_no_event(
    pool_and_writer: tuple[WorkerPool, Slot, EventWriter],
) -> None:
    pool, slot, writer = pool_and_writer

    def report(first: int, count: int, foreign: bytes) -> None:
        """``count`` tasks' events from task ``first`` on, ``foreign`` lines among them."""
        for i in range(first, first + count):  # (50 tasks: ~12 KB, well within a pipe)
            writer.started(Task(f"t{i}", "flow-a", 1, {}))
            writer.step("fetch")
            if i == first + count // 2:
                os.write(writer.events_fd, foreign)
            writer.finished("succeeded" if i % 2 else "retrying", 0.01, 1, None)

    # Given a read that finds 50 tasks' events and JSON lines that are not events (a list, an
    # object without an event), then one that finds 50 more and a line of two JSON values
    report(0, 50, b"[1, 2]\n{}\n")
    pool.read_events()
    report(50, 50, b"1, 2\n")
    pool.read_events()

    # Then every task counts once, as its outcome, and none is left running
    assert pool.outcomes.counts["first_attempts"] == 100
    assert pool.outcomes.counts["succeeded"] == 50 and pool.outcomes.counts["retrying"] == 50
    assert pool.outcomes.duration_count == 100
    assert running(slot) is None


def test_duration_bucket_counts_are_cumulative() -> None:
    outcomes = Outcomes()
    for duration_s in (0.001, 0.005, 0.02, 0.5, 100.0):
        outcomes.add("succeeded", duration_s, 1, "f")

    doc = outcomes.to_dict()

    # Each bucket counts every duration up to its bound (Prometheus "le"); 100 s is in none
    expected = [sum(1 for d in (0.001, 0.005, 0.02, 0.5) if d <= b) for b in DURATION_BUCKETS_S]
    assert doc["duration_bucket_counts"] == expected
    assert doc["duration_count"] == 5
    assert doc["flows"]["f"]["duration_bucket_counts"] == expected


@pytest.mark.skipif(not hasattr(fcntl, "F_SETPIPE_SZ"), reason="pipe sizes are Linux's")
def test_a_workers_events_pipe_holds_a_second_of_a_draining_workers_events() -> None:
    # Given a worker's events pipe, in a pool that has not read it for a while
    read_fd, write_fd = events_pipe()
    try:
        os.set_blocking(write_fd, False)
        line = b'{"event": "step", "step": "echo"}\n'
        # When a worker draining a backlog writes most of a second's events (~1 MB a second;
        # the default pipe holds 64 KiB)
        lines = 900_000 // len(line)
        for _ in range(lines):
            os.write(write_fd, line)  # BlockingIOError: the worker would have stopped here
        # Then all of it waits in the pipe, and the pool reads it back whole
        got = b""
        while chunk := os.read(read_fd, 65536):
            got += chunk
            if len(got) == lines * len(line):
                break
        assert got == line * lines
    finally:
        os.close(read_fd)
        os.close(write_fd)
