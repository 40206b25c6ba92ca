"""A deep backlog costs what a shallow one does: 2 worker processes (``tm workers start -n 2``)
drain a window of tasks at 200,000 pending at least half as fast as at 10,000, their memory
does not grow with the backlog, and counting the deep queue from a refreshed census lists a few
directories, not the backlog. (The 1,000,000-task figures are in bench/, figures 8 and 9.)

Bounded: about a minute here (most of it writing and removing 200,000 files); every file is
removed at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tm_testing import ECHO_FLOW, Processes, Tm, wait_until
from tracemind.backend.file.stores import open_stores
from tracemind.config import DataDirs
from tracemind.flows import load_flow
from tracemind.submit import Submission

pytestmark = pytest.mark.slow

DEEP = 200_000
SHALLOW = 10_000
CHUNK = 20_000
SKIP = 1_000
"""Tasks completed before the window opens: the workers' start-up is never in it."""
WINDOW = 5_000
MIN_DEEP_SHARE = 0.5
"""The deep rate must be at least this share of the shallow rate (an O(backlog) lease, as before
the buckets, drained 1.5 tasks/s at 200,000)."""
MAX_RSS_GROWTH_MB = 20.0
"""A worker that held the backlog's names in memory grew by ~0.47 KB a task: ~90 MB here."""
MAX_DIRECTORY_LISTINGS = 6
MAX_ENTRIES_LISTED = 2_000
SETTLE_S = 2.5
"""A bucket enters the census once it has been unchanged for 2 s (census.SETTLE_S)."""
WAIT_S = 60.0
ONE_BATCH_WAIT_S = 20.0
ONE_BATCH_WINDOW_S = 5.0
SUCCEEDED = b'"event": "task succeeded"'


class ScandirCounter:
    """Wraps ``os.scandir``: how many directories were listed and how many entries were read."""

    def __init__(self) -> None:
        self.real = os.scandir
        self.calls = 0
        self.entries = 0

    def __call__(self, path: Any = ".") -> _CountedListing:
        self.calls += 1
        return _CountedListing(self.real(path), self)


class _CountedListing:
    def __init__(self, listing: Any, counter: ScandirCounter) -> None:
        self.listing = listing
        self.counter = counter

    def __enter__(self) -> _CountedListing:
        return self

    def __exit__(self, *exc: object) -> None:
        self.listing.close()

    def __iter__(self) -> Iterator[os.DirEntry[str]]:
        for entry in self.listing:
            self.counter.entries += 1
            yield entry

    def close(self) -> None:
        self.listing.close()


@pytest.fixture
def area(tmp_path: Path) -> Iterator[Path]:
    """A directory for the queues, removed with everything in it at the end (pytest keeps
    ``tmp_path`` of recent runs, and 200,000 task files are too many to keep)."""
    root = tmp_path / "backlog"
    root.mkdir()
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def dirs_of(data: Path) -> DataDirs:
    return DataDirs(data / "queue", data / "idempotency", data / "dlq")


def build(data: Path, flow_path: Path, count: int, chunk: int = CHUNK) -> None:
    """``count`` tasks through the library's batch submit, ``chunk`` per batch (not synced: a
    test needs no fsync). A batch's tasks are all due at its submission: one bucket each."""
    flow = load_flow(flow_path)
    submitter = open_stores(dirs_of(data), durable=False).submitter(ttl_s=3600.0)
    for first in range(0, count, chunk):
        batch = [Submission({"i": i}) for i in range(first, min(count, first + chunk))]
        submitter.submit_many(flow, batch)


def succeeded(log: Path) -> int:
    return log.read_bytes().count(SUCCEEDED) if log.exists() else 0


def success_times(log: Path) -> list[float]:
    times = [
        datetime.fromisoformat(json.loads(line)["timestamp"]).timestamp()
        for line in log.read_bytes().splitlines()
        if SUCCEEDED in line
    ]
    return sorted(times)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def worker_pids(pool_pid: int) -> list[int]:
    children = Path(f"/proc/{pool_pid}/task/{pool_pid}/children").read_text().split()
    return [int(pid) for pid in children]


def start_pool(tm: Tm, data: Path, log: Path) -> subprocess.Popen[Any]:
    return tm.start(
        "workers",
        "start",
        "-n",
        "2",
        stdout=log,
        env={"TM_DATA_DIR": str(data), "TM_FILE_QUEUE_V2": "0"},
    )


def stop_pool(pool: subprocess.Popen[Any]) -> None:
    pool.send_signal(signal.SIGTERM)
    try:
        pool.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pool.kill()
        pool.wait(timeout=10)


def drain_window(tm: Tm, data: Path, log: Path) -> tuple[float, float]:
    """Run ``tm workers start -n 2`` on ``data`` until SKIP + WINDOW tasks succeeded; (tasks/s
    over the window, the largest worker RSS in MB at its end). The pool is stopped after."""
    pool = start_pool(tm, data, log)
    try:
        wait_until(lambda: succeeded(log) >= SKIP + WINDOW, WAIT_S, "the drain window")
        largest_rss_mb = max(rss_mb(pid) for pid in worker_pids(pool.pid))
    finally:
        stop_pool(pool)
    times = success_times(log)
    return WINDOW / (times[SKIP + WINDOW - 1] - times[SKIP - 1]), largest_rss_mb


@pytest.mark.timeout(180)
def test_a_deep_backlog_drains_and_counts_like_a_shallow_one(
    area: Path, tmp_path: Path, processes: Processes, tm_env: dict[str, str]
) -> None:
    # Given: a queue of 200,000 pending no-op tasks and one of 10,000
    flow = tmp_path / "echo.json"
    flow.write_text(json.dumps(ECHO_FLOW))
    deep, shallow = area / "deep", area / "shallow"
    build(deep, flow, DEEP)
    build(shallow, flow, SHALLOW)
    tm = Tm(tm_env, tmp_path, processes)

    # When: two workers drain a window of 5,000 tasks from each, after 1,000 for start-up
    shallow_rate, shallow_rss = drain_window(tm, shallow, area / "shallow.log")
    deep_rate, deep_rss = drain_window(tm, deep, area / "deep.log")

    # Then: the deep window drains at least half as fast, and the workers hold no more memory
    assert deep_rate >= MIN_DEEP_SHARE * shallow_rate, (deep_rate, shallow_rate)
    assert deep_rss <= shallow_rss + MAX_RSS_GROWTH_MB, (deep_rss, shallow_rss)

    # And: without a census (the pool's supervisor kept one: it is removed) a reader lists the
    # whole backlog, which is what the counter below would see of an O(backlog) count ...
    left = DEEP - succeeded(area / "deep.log")
    (deep / "queue" / "census.json").unlink()
    counter = ScandirCounter()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "scandir", counter)
        cold = open_stores(dirs_of(deep), durable=False).queue.stats()
    assert cold.pending + cold.inflight == left
    assert counter.entries >= left

    # ... but once a writer refreshed the census (as the pool's supervisor does every second),
    # counting the deep queue lists a few directories and reads few names
    time.sleep(SETTLE_S)
    open_stores(dirs_of(deep), durable=False).queue.refresh_census()
    counter = ScandirCounter()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "scandir", counter)
        warm = open_stores(dirs_of(deep), durable=False).queue.stats()
    assert (warm.pending, warm.inflight) == (cold.pending, cold.inflight)
    assert counter.calls <= MAX_DIRECTORY_LISTINGS, counter.calls
    assert counter.entries <= MAX_ENTRIES_LISTED, counter.entries


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_backlog_enqueued_as_one_batch_drains_like_a_shallow_one(
    area: Path, tmp_path: Path, processes: Processes, tm_env: dict[str, str]
) -> None:
    # Given: 200,000 tasks enqueued as one batch, and a shallow queue of 10,000
    flow = tmp_path / "echo.json"
    flow.write_text(json.dumps(ECHO_FLOW))
    deep, shallow = area / "one-batch", area / "shallow"
    build(deep, flow, DEEP, chunk=DEEP)
    build(shallow, flow, SHALLOW)
    tm = Tm(tm_env, tmp_path, processes)
    shallow_rate, _ = drain_window(tm, shallow, area / "shallow.log")

    # When: two workers drain the batch for a fixed time (a rate even if it collapses)
    log = area / "one-batch.log"
    pool = start_pool(tm, deep, log)
    try:
        deadline = time.monotonic() + ONE_BATCH_WAIT_S
        while succeeded(log) < SKIP and time.monotonic() < deadline:
            time.sleep(0.05)
        first = succeeded(log)
        time.sleep(ONE_BATCH_WINDOW_S)
        deep_rate = (succeeded(log) - first) / ONE_BATCH_WINDOW_S
    finally:
        stop_pool(pool)

    # Then: it drains at least half as fast as the shallow queue
    assert deep_rate >= MIN_DEEP_SHARE * shallow_rate, (deep_rate, shallow_rate)
