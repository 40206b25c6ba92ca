"""A burst pool that wakes on events instead of polling: an idle worker stops the moment it is
signalled, the supervisor stops once every worker reported idle (not on its tick), and forked
workers carry none of the pool's descriptors and die with it."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tm_testing import FlowFiles, Tm, json_lines, wait_until
from tracemind.backend.file.stores import open_stores
from tracemind.backend.location import Location
from tracemind.config import DataDirs
from tracemind.worker import consumer as consumer_module
from tracemind.worker import pool as pool_module
from tracemind.worker import supervisor as supervisor_module
from tracemind.worker.consumer import Consumer
from tracemind.worker.pool import WorkerPool
from tracemind.worker.runtime import FlowRuntime
from tracemind.worker.settings import PoolSettings, WorkerSettings
from tracemind.worker.supervisor import Supervisor

LONG_S = 30.0
"""A tick or idle wait so long that a test waiting on it would time out."""

FD_HOOKS = '''
import os


def open_fds(ctx, state):
    """What this worker process holds open, as readlink(2) names it."""
    fds = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            fds[name] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # the listing's own descriptor, closed by now
            pass
    return {"fds": fds, "pid": os.getpid()}
'''


@pytest.fixture
def sigterm_handler() -> Iterator[None]:
    previous = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_an_idle_consumer_stops_at_once_when_signalled(
    dirs: DataDirs, monkeypatch: pytest.MonkeyPatch, sigterm_handler: None
) -> None:
    # Given a consumer waiting on an empty queue with a 30 s idle wait
    monkeypatch.setattr(consumer_module, "IDLE_WAIT_S", LONG_S)
    queue = open_stores(dirs, durable=False).queue
    consumer = Consumer(queue, FlowRuntime(), "c1", lease_s=30.0)
    signal.signal(signal.SIGTERM, lambda signum, frame: consumer.stop_from_signal())
    # When SIGTERM arrives while it waits
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    started_s = time.monotonic()
    try:
        consumer.run()
    finally:
        timer.cancel()
    # Then it returns at once, not when the wait would have ended
    assert time.monotonic() - started_s < LONG_S / 3
    assert consumer.stopping.is_set()


def test_a_burst_pool_stops_when_its_workers_report_idle_not_on_its_tick(
    tm: Tm, flows: FlowFiles, dirs: DataDirs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given 5 tasks, and a burst supervisor whose tick and drain tick are 30 s
    flow = flows.write("echo", "tracemind.steps.echo")
    task_ids = [tm("enqueue", flow, "-i", f'{{"n": {i}}}').stdout.strip() for i in range(5)]
    monkeypatch.setattr(supervisor_module, "TICK_S", LONG_S)
    monkeypatch.setattr(pool_module, "DRAIN_TICK_S", LONG_S)
    stores = open_stores(dirs, durable=True)
    log = tmp_path / "pool.log"
    worker = WorkerSettings(
        location=Location.for_file_dirs(str(dirs.queue), str(dirs.idempotency), str(dirs.dlq)),
        durable=True,
        runtime="tracemind.worker.runtime:FlowRuntime",
        lease_s=30.0,
        log_file=str(log),
        report_idle=True,
    )
    settings = PoolSettings(size=2, instance_id="0123456789ab", worker=worker)
    supervisor = Supervisor(
        WorkerPool(settings, stores.queue), stores.queue, drain_timeout_s=LONG_S, burst=True
    )
    # When it runs
    started_s = time.monotonic()
    drained = supervisor.run()
    elapsed_s = time.monotonic() - started_s
    # Then it stopped well before one tick: woken by the workers' idle reports, then their exits
    assert drained is True
    assert elapsed_s < LONG_S / 2, elapsed_s
    assert all(stores.queue.find(t).status == "succeeded" for t in task_ids)  # type: ignore[union-attr]
    assert stores.queue.stats().inflight == 0
    events = json_lines(log)
    assert sum(e["event"] == "worker stopped" for e in events) == 2, events


def _show(tm: Tm, task_id: str) -> dict[str, Any]:
    return tm.json("task", "show", task_id, "--json")  # type: ignore[no-any-return]


@pytest.mark.slow
def test_forked_workers_hold_their_own_pipes_and_none_of_the_pools(
    tm: Tm, flows: FlowFiles, helpers_dir: Path, tmp_path: Path
) -> None:
    # Given a task that reports the descriptors of the worker running it
    (helpers_dir / "tm_burst_hooks.py").write_text(FD_HOOKS)
    task_id = tm("enqueue", flows.write("fds", "tm_burst_hooks.open_fds")).stdout.strip()
    # When a burst pool of 2 forked workers runs it
    log = tmp_path / "workers.log"
    pool = tm.start("workers", "start", "-n", "2", "--burst", stdout=log)
    assert pool.wait(timeout=60) == 0, log.read_text()
    # Then the worker held its events pipe and the shared wake pipe, nothing of the pool's (its
    # self-pipe, its pidfds, the other worker's pipe), and stdin is /dev/null
    result = _show(tm, task_id)["result"]
    fds: dict[str, str] = result["fds"]
    assert fds["0"] == "/dev/null"
    pipes = [target for target in fds.values() if target.startswith("pipe:")]
    assert len(pipes) == 2, fds
    assert not [target for target in fds.values() if "pidfd" in target], fds
    spawned = [e for e in json_lines(log) if e.get("event") == "worker spawned"]
    assert result["pid"] in {e["pid"] for e in spawned}


@pytest.mark.slow
def test_a_burst_pools_idle_workers_look_again_without_a_watch_to_tear_down(
    tm: Tm, flows: FlowFiles, helpers_dir: Path, tmp_path: Path
) -> None:
    # Given a task delayed by a second, reporting the descriptors of the worker running it
    (helpers_dir / "tm_burst_hooks.py").write_text(FD_HOOKS)
    flow = flows.write("fds", "tm_burst_hooks.open_fds")
    task_id = tm("enqueue", flow, "--delay", "1s").stdout.strip()
    # When a burst pool runs it, its workers idle until it falls due
    log = tmp_path / "workers.log"
    pool = tm.start("workers", "start", "-n", "2", "--burst", stdout=log)
    assert pool.wait(timeout=60) == 0, log.read_text()
    # Then the worker that ran it had waited without an inotify watch (whose teardown at exit
    # would hold up the end of the burst)
    result = _show(tm, task_id)["result"]
    assert not [t for t in result["fds"].values() if "inotify" in t], result["fds"]


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


@pytest.mark.slow
def test_a_killed_pool_leaves_no_forked_worker_behind(tm: Tm, tmp_path: Path) -> None:
    # Given a pool of 2 forked workers, both started
    log = tmp_path / "workers.log"
    pool = tm.start("workers", "start", "-n", "2", stdout=log)
    wait_until(
        lambda: sum(e.get("event") == "worker started" for e in json_lines(log)) == 2,
        30,
        "2 workers to start",
    )
    workers = [e["pid"] for e in json_lines(log) if e.get("event") == "worker spawned"]
    assert len(workers) == 2 and all(_alive(pid) for pid in workers)
    # When the pool process alone is SIGKILLed
    pool.kill()
    pool.wait(timeout=30)
    # Then its workers die with it
    wait_until(lambda: not any(_alive(pid) for pid in workers), 30, "the workers to die")
