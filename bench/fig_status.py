"""Figure 7 — status endpoint latency: ``/livez`` and ``/status`` at a steady request rate while
the daemon's 2 workers are busy, in two scenarios: each worker inside a long sleeping task (the
endpoint's own cost), and both draining a deep backlog of no-op tasks (CPU and queue-size load).

Requests are sent open-loop (each at its scheduled time, from several client threads so one slow
answer does not delay the next), one new TCP connection each, as a prober would; the endpoints
alternate. Tasks are seeded so the workers stay busy for the whole window (checked afterwards:
tasks still pending).
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.context import Context
from bench.core import BenchError, FigureResult, Row, median, percentile
from bench.env import ours_env, run_timed
from bench.pool import OurPool, daemon_available
from bench.workload import write_inputs, write_noop_flow, write_sleep_flow

RATE_PER_S = 200
CLIENT_THREADS = 16
PATHS = ("/livez", "/status")
HOST = "127.0.0.1"
NAP_S = 0.5
STARTUP_ALLOWANCE_S = 15.0


@dataclass
class Samples:
    latency_ms: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PATHS})
    late_starts: int = 0
    failures: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def get(port: int, path: str) -> int:
    conn = http.client.HTTPConnection(HOST, port, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def wait_alive(port: int, timeout_s: float) -> bool:
    """Whether /livez answers 200 within ``timeout_s``: the endpoint starts before the daemon's
    first heartbeat, which a deep backlog delays (the heartbeat counts the waiting tasks)."""
    deadline_s = time.monotonic() + timeout_s
    while time.monotonic() < deadline_s:
        if get(port, "/livez") == 200:
            return True
        time.sleep(0.1)
    return False


def send_slots(port: int, start_s: float, slots: range, samples: Samples) -> None:
    interval_s = 1 / RATE_PER_S
    for slot in slots:
        path = PATHS[slot % len(PATHS)]
        due_s = start_s + slot * interval_s
        delay_s = due_s - time.perf_counter()
        if delay_s > 0:
            time.sleep(delay_s)
        sent_s = time.perf_counter()
        try:
            status = get(port, path)
        except OSError:
            status = 0
        elapsed_ms = 1000 * (time.perf_counter() - sent_s)
        with samples.lock:
            samples.late_starts += sent_s - due_s > interval_s
            if status == 200:
                samples.latency_ms[path].append(elapsed_ms)
            else:
                samples.failures += 1


def load(port: int, window_s: float) -> Samples:
    samples = Samples()
    total = int(window_s * RATE_PER_S)
    start_s = time.perf_counter() + 0.05
    threads = [
        threading.Thread(
            target=send_slots, args=(port, start_s, range(i, total, CLIENT_THREADS), samples)
        )
        for i in range(CLIENT_THREADS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return samples


@dataclass(frozen=True)
class Scenario:
    name: str
    label: str
    flow: Path
    inputs: Path


def measure(ctx: Context, scenario: Scenario) -> tuple[Samples, dict[str, Any]]:
    """Seed the scenario's tasks, start the daemon with its status server, load it."""
    from tracemind import config
    from tracemind.backend.file.stores import open_stores
    from tracemind.backend.location import data_location

    data = ctx.new_dir(f"status-{scenario.name}-")
    tm = ctx.programs.tm
    enqueue = [tm, "enqueue", str(scenario.flow), "--inputs", str(scenario.inputs)]
    run_timed(enqueue, env=ours_env(data), timeout_s=600)
    port = free_port()
    window_s = ctx.sizes.status_window_s
    with OurPool(tm, data, status_bind=f"{HOST}:{port}") as pool:
        if not wait_alive(port, timeout_s=STARTUP_ALLOWANCE_S):
            raise BenchError("/livez does not answer 200 on a running daemon")
        queue = open_stores(
            config.DataDirs.of(*data_location(env=pool.env).file_dirs()), durable=True
        ).queue
        before = queue.stats()
        ctx.say(f"status ({scenario.name}): {RATE_PER_S} req/s for {window_s:g} s")
        samples = load(port, window_s)
        after = queue.stats()
    params = {
        "pending_at_start": before.pending,
        "pending_at_end": after.pending,
        "inflight_at_end": after.inflight,
        "late_starts": samples.late_starts,
        "failures": samples.failures,
    }
    if after.pending == 0:
        raise BenchError(f"status ({scenario.name}): the queue emptied; workers went idle")
    return samples, params


def run(ctx: Context) -> FigureResult:
    window_s = ctx.sizes.status_window_s
    result = FigureResult(7, "status", f"Status endpoint at {RATE_PER_S} req/s, 2 busy workers")
    work = ctx.new_dir("status-")
    if not daemon_available(ctx.programs.tm, ours_env(work / "data")):
        result.status = "skipped"
        result.note = "skipped: `tm daemon start` (which serves the status endpoint) is missing"
        return result
    # Enough sleeping tasks to keep both workers busy through start-up and the window.
    naps = int(2 * (window_s + STARTUP_ALLOWANCE_S) / NAP_S)
    scenarios = [
        Scenario(
            "sleeping",
            f"workers in {NAP_S:g} s sleep tasks",
            write_sleep_flow(work),
            write_inputs(work, naps, seconds=NAP_S),
        ),
        Scenario(
            "draining",
            f"workers draining a {ctx.sizes.status_seed_tasks:,}-task backlog",
            write_noop_flow(work),
            write_inputs(work, ctx.sizes.status_seed_tasks),
        ),
    ]
    result.params = {"rate_per_s": RATE_PER_S, "window_s": window_s, "nap_tasks": naps}
    for scenario in scenarios:
        samples, params = measure(ctx, scenario)
        result.params[scenario.name] = params
        result.values[f"{scenario.name} failures"] = float(samples.failures)
        for path in PATHS:
            lat = samples.latency_ms[path]
            if not lat:
                raise BenchError(f"no successful request to {path} ({scenario.name})")
            result.samples[f"{scenario.name} {path}"] = lat
            p50, p99 = median(lat), percentile(lat, 99)
            result.values[f"{scenario.name} {path} p50 ms"] = p50
            result.values[f"{scenario.name} {path} p99 ms"] = p99
            label = f"`GET {path}`, {scenario.label}"
            result.rows.append(Row(f"{label}: p50", "ms", p50))
            result.rows.append(Row(f"{label}: p99", "ms", p99))
    return result
