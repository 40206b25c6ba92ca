"""What the backlog figures (8-12) share: building deep queues on both sides, a daemon whose log
goes to a file and is followed without parsing it, worker processes' memory, drain windows.

A deep backlog is expensive (a million task files take minutes and gigabytes), so it is built
once per run and handed from the figure that only reads it (figure 8, inspection) to the one
that drains it (figure 9); either builds it when run alone.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType

from bench.context import Context
from bench.core import BenchError
from bench.env import CHILDREN_DIR, huey_env, kill_tree, last_json, ours_env, run_timed
from bench.procstat import tree, usage
from bench.workload import write_noop_flow

BUILD_TIMEOUT_S = 3600.0
STOP_TIMEOUT_S = 30.0
POLL_S = 0.01
SUCCEEDED = b'"event": "task succeeded"'
WORKER_STARTED = b'"event": "worker started"'
STATUS_STARTED = b'"event": "status server started"'
WORKER_MODULE = "tracemind.worker.process"


@dataclass
class DeepQueue:
    """Our deep backlog: a data directory holding ``count`` no-op tasks (durable batches)."""

    data: Path
    flow: Path
    count: int
    middle_id: str
    build_s: float
    drained: bool = False
    """Set by the figure that drains it: later figures must build their own."""


def seed_ours(ctx: Context, data: Path, flow: Path, count: int) -> dict[str, object]:
    """Enqueue ``count`` no-op tasks into ``data`` with the library's batch submit (durable)."""
    chunk = str(ctx.backlog.build_chunk)
    done = run_timed(
        [ctx.programs.python, str(CHILDREN_DIR / "ours_seed.py"), str(flow), str(count), chunk],
        env=ours_env(data),
        timeout_s=BUILD_TIMEOUT_S,
        capture=True,
    )
    return last_json(done.stdout)


def deep_queue(ctx: Context) -> DeepQueue:
    """The run's deep backlog, built on first use (and again once a figure drained it)."""
    deep = ctx.shared.get("deep")
    if isinstance(deep, DeepQueue) and not deep.drained:
        return deep
    work = ctx.new_dir("deep-")
    flow = write_noop_flow(work)
    count = ctx.backlog.depth
    ctx.say(f"backlog: enqueueing {count:,} tasks (library batches, durable)")
    seeded = seed_ours(ctx, work / "data", flow, count)
    ids = seeded["ids"]
    assert isinstance(ids, dict)
    deep = DeepQueue(work / "data", flow, count, str(ids["middle"]), float(str(seeded["seconds"])))
    ctx.say(f"backlog: {count:,} tasks in {deep.build_s:.0f} s")
    ctx.shared["deep"] = deep
    return deep


def seed_huey(ctx: Context, db: Path, count: int) -> float:
    """Queue ``count`` no-op tasks in SqliteHuey (children/huey_seed.py); seconds taken."""
    done = run_timed(
        [ctx.programs.huey_python, str(CHILDREN_DIR / "huey_seed.py"), str(count)],
        env=huey_env(db),
        timeout_s=BUILD_TIMEOUT_S,
        capture=True,
    )
    return float(last_json(done.stdout)["seconds"])


def worker_rss_mb(root: int, module: str | None) -> list[float]:
    """Resident memory (MB) of each worker process under ``root``: those whose command line
    names ``module``, or (``None``) every direct child of ``root``."""
    found = []
    for pid in tree(root)[1:]:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            parent = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
        except OSError:
            continue
        if module is not None and module.encode() not in cmdline:
            continue
        if module is None and int(parent) != root:
            continue
        found.append(usage(pid).rss_bytes / 2**20)
    return found


class LogFollower:
    """Counts marker strings in a growing log file, reading only what was appended."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.counts: dict[bytes, int] = {}
        self._offset = 0
        self._rest = b""

    def count(self, marker: bytes) -> int:
        return self.counts.get(marker, 0)

    def poll(self, *markers: bytes) -> None:
        with contextlib.suppress(FileNotFoundError), open(self.path, "rb") as log:
            log.seek(self._offset)
            chunk = log.read()
        if not chunk:
            return
        self._offset += len(chunk)
        text = self._rest + chunk
        end = text.rfind(b"\n") + 1  # whole lines only: a marker is never split
        self._rest = text[end:]
        for marker in markers or tuple(self.counts):
            self.counts[marker] = self.counts.get(marker, 0) + text[:end].count(marker)


class LoggedDaemon:
    """``tm daemon start --foreground`` with 2 (or ``workers``) workers on ``data``, its JSON
    log written to a file (never parsed while it runs: the bench must not compete for the CPU
    with the workers), stopped with SIGTERM on exit."""

    def __init__(
        self, ctx: Context, data: Path, *, workers: int = 2, status_port: int | None = None
    ) -> None:
        self.env = ours_env(data)
        self.env["TM_ENABLE_DAEMON"] = "1"
        self.log_path = data.parent / f"daemon-{time.monotonic_ns()}.log"
        self.cmd = [
            ctx.programs.tm,
            "daemon",
            "start",
            "--foreground",
            "--inherit-logs",
            "--workers",
            str(workers),
            "--state-dir",
            str(data / "state"),
        ]
        if status_port is not None:
            self.cmd += ["--status-bind", f"127.0.0.1:{status_port}"]
        self.workers = workers
        self.status = status_port is not None
        self.log = LogFollower(self.log_path)
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused: list[int] = []

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise BenchError("daemon not started")
        return self.proc.pid

    def __enter__(self) -> LoggedDaemon:
        with open(self.log_path, "wb") as out, open(self.log_path.with_suffix(".err"), "wb") as err:
            self.proc = subprocess.Popen(
                self.cmd, env=self.env, stdin=subprocess.DEVNULL, stdout=out, stderr=err
            )
        try:
            self.wait(self._ready, 120.0, "the daemon's workers to start")
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.resume_workers()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            kill_tree(self.proc)

    def _ready(self) -> bool:
        self.log.poll(WORKER_STARTED, STATUS_STARTED, SUCCEEDED)
        started = self.log.count(WORKER_STARTED) >= self.workers
        return started and (not self.status or self.log.count(STATUS_STARTED) > 0)

    def succeeded(self) -> int:
        self.log.poll(SUCCEEDED)
        return self.log.count(SUCCEEDED)

    def wait(self, done: object, timeout_s: float, what: str) -> None:
        assert callable(done)
        deadline = time.monotonic() + timeout_s
        while not done():
            if self.proc is not None and self.proc.poll() is not None:
                raise BenchError(f"the daemon exited while waiting for {what}")
            if time.monotonic() > deadline:
                raise BenchError(f"timed out after {timeout_s:g} s waiting for {what}")
            time.sleep(POLL_S)

    def wait_succeeded(self, count: int, timeout_s: float) -> None:
        self.wait(lambda: self.succeeded() >= count, timeout_s, f"{count:,} tasks to succeed")

    def worker_pids(self) -> list[int]:
        pids = []
        for pid in tree(self.pid)[1:]:
            with contextlib.suppress(OSError):
                if WORKER_MODULE.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    pids.append(pid)
        return pids

    def worker_rss_mb(self) -> list[float]:
        return worker_rss_mb(self.pid, WORKER_MODULE)

    def pause_workers(self) -> int:
        """SIGSTOP this daemon's workers (the daemon itself keeps its census fresh)."""
        self.paused = self.worker_pids()
        for pid in self.paused:
            os.kill(pid, signal.SIGSTOP)
        return len(self.paused)

    def resume_workers(self) -> None:
        for pid in self.paused:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self.paused = []

    def succeeded_times(self, upto: int) -> list[float]:
        """Epoch seconds of the first ``upto`` successes in the log, in order (parsed after the
        fact, only the lines that report a success)."""
        import json

        times: list[float] = []
        with open(self.log_path, "rb") as log:
            for line in log:
                if SUCCEEDED in line:
                    stamp = json.loads(line)["timestamp"]
                    times.append(datetime.fromisoformat(stamp).timestamp())
                    if len(times) >= upto:
                        break
        return sorted(times)


def window_rates(times: list[float], marks: list[int]) -> list[float]:
    """Tasks per second between consecutive marks (``times[k - 1]`` is when the k-th task
    completed)."""
    rates = []
    for start, end in itertools.pairwise(marks):
        span_s = times[end - 1] - times[start - 1]
        if span_s <= 0:
            raise BenchError(f"window {start}..{end}: no time elapsed")
        rates.append((end - start) / span_s)
    return rates


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def get_ms(port: int, path: str) -> float | None:
    """Milliseconds for one ``GET path`` on a new connection; None unless it answers 200."""
    import http.client

    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        ok = response.status == 200
    except OSError:
        ok = False
    finally:
        conn.close()
    return 1000 * (time.perf_counter() - started) if ok else None


def probe(
    port: int, paths: tuple[str, ...], window_s: float, rate_per_s: float
) -> dict[str, list[float]]:
    """Request ``paths`` in turn at ``rate_per_s`` (one client, each request on a new
    connection, as a scraper or prober does) for ``window_s``; the latencies of each path
    (failures are left out and counted under ``"failures"``)."""
    latency: dict[str, list[float]] = {path: [] for path in (*paths, "failures")}
    interval_s = 1 / rate_per_s
    start_s = time.perf_counter()
    total = int(window_s * rate_per_s)
    for slot in range(total):
        delay_s = start_s + slot * interval_s - time.perf_counter()
        if delay_s > 0:
            time.sleep(delay_s)
        path = paths[slot % len(paths)]
        elapsed = get_ms(port, path)
        if elapsed is None:
            latency["failures"].append(1.0)
        else:
            latency[path].append(elapsed)
    return latency


def wait_answering(port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while get_ms(port, "/livez") is None:
        if time.monotonic() > deadline:
            raise BenchError("the status endpoint does not answer /livez")
        time.sleep(0.1)
