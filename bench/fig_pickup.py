"""Figure 5 — pick-up latency: an idle pool, one task enqueued, time until it starts running.

Each sample enqueues one task through the library (durable, from this process) after a random
pause, so enqueues do not fall into step with the workers' polling; the latency runs from the
start of the enqueue call to the task's ``task started`` log timestamp (same clock, same host).
"""

from __future__ import annotations

import functools
import random
import time

from bench.context import Context
from bench.core import FigureResult, Goal, Row, median, percentile
from bench.pool import OurPool
from bench.workload import write_noop_flow

PAUSE_S = (0.02, 0.08)
SAMPLE_TIMEOUT_S = 10.0


def run(ctx: Context) -> FigureResult:
    from tracemind import config
    from tracemind.backend.file.stores import open_stores
    from tracemind.backend.location import data_location
    from tracemind.flows import load_flow

    n = ctx.sizes.pickup_samples
    result = FigureResult(5, "pickup", f"Pick-up latency, idle pool, {n} single tasks (ms)")
    latencies_ms: list[float] = []
    enqueue_ms: list[float] = []
    rng = random.Random(5)
    work = ctx.new_dir("pickup-")
    flow = load_flow(str(write_noop_flow(work)))
    with OurPool(ctx.programs.tm, work / "data") as pool:
        dirs = config.DataDirs.of(*data_location(env=pool.env).file_dirs())
        submitter = open_stores(dirs, durable=True).submitter(config.idempotency_ttl_s())
        time.sleep(0.5)  # let the workers settle into their idle loop
        for i in range(n):
            time.sleep(rng.uniform(*PAUSE_S))
            called_s = time.time()
            task_id = submitter.submit(flow, {"i": i}).task_id
            enqueue_ms.append(1000 * (time.time() - called_s))
            pool.wait_for(functools.partial(pool.succeeded, task_id), SAMPLE_TIMEOUT_S, "a task")
            latencies_ms.append(1000 * (pool.started_s[task_id] - called_s))
        kind = pool.kind
    result.samples = {"latency ms": latencies_ms, "enqueue call ms": enqueue_ms}
    result.params = {"samples": n, "target": kind, "workers": 2}
    p50, p99 = median(latencies_ms), percentile(latencies_ms, 99)
    result.values = {
        "p50 ms": p50,
        "p99 ms": p99,
        "max ms": max(latencies_ms),
        "enqueue call p50 ms": median(enqueue_ms),
    }
    target = "daemon" if kind == "daemon" else "`tm workers start -n 2`"
    result.rows = [
        Row(f"pick-up latency p50 ({target})", "ms", p50, goal=Goal("ours", "<", 50, " ms")),
        Row(f"pick-up latency p99 ({target})", "ms", p99),
    ]
    return result
