"""Figure 6 — idle cost: CPU seconds and resident memory of an idle pool with 2 workers (every
process of it), beside Huey's idle consumer (``-w 2 -k process``) over the same window."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from bench.context import Context
from bench.core import BenchError, FigureResult, Goal, Row
from bench.env import huey_env, stop_process
from bench.pool import OurPool
from bench.procstat import cpu_between, tree, usage

SETTLE_S = 1.0


def start_huey(ctx: Context, work: Path) -> subprocess.Popen[bytes]:
    log = open(work / "consumer.log", "wb")  # noqa: SIM115 - handed to the child
    try:
        return subprocess.Popen(
            [ctx.programs.huey_consumer, "huey_app.huey", "-w", "2", "-k", "process"],
            env=huey_env(work / "huey.db"),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    finally:
        log.close()


def wait_for_children(proc: subprocess.Popen[bytes], count: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while len(tree(proc.pid)) < count + 1:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise BenchError("the Huey consumer did not start its workers")
        time.sleep(0.05)


def run(ctx: Context) -> FigureResult:
    window_s = ctx.sizes.idle_s
    result = FigureResult(6, "idle", f"Idle cost over {window_s:g} s, 2 workers")
    work = ctx.new_dir("idle-")
    huey = start_huey(ctx, work)
    try:
        with OurPool(ctx.programs.tm, work / "data") as pool:
            wait_for_children(huey, 2, 30.0)
            time.sleep(SETTLE_S)
            ours_before, huey_before = usage(pool.pid), usage(huey.pid)
            ctx.say(f"idle: measuring for {window_s:g} s")
            time.sleep(window_s)
            ours_after, huey_after = usage(pool.pid), usage(huey.pid)
            kind = pool.kind
    finally:
        stop_process(huey, signal.SIGINT, 20.0)
    ours_cpu_pct = 100 * cpu_between(ours_before, ours_after) / window_s
    huey_cpu_pct = 100 * cpu_between(huey_before, huey_after) / window_s
    ours_rss_mb, huey_rss_mb = ours_after.rss_bytes / 2**20, huey_after.rss_bytes / 2**20
    result.params = {
        "window_s": window_s,
        "target": kind,
        "ours_processes": len(ours_after.cpu_s),
        "huey_processes": len(huey_after.cpu_s),
    }
    result.values = {
        "ours cpu % of one core": ours_cpu_pct,
        "huey cpu % of one core": huey_cpu_pct,
        "ours rss MB": ours_rss_mb,
        "huey rss MB": huey_rss_mb,
    }
    target = "daemon" if kind == "daemon" else "`tm workers start -n 2`"
    huey_label = "idle huey_consumer -w 2 -k process"
    result.rows = [
        Row(
            f"idle CPU, % of one core ({target})",
            "%",
            ours_cpu_pct,
            huey_cpu_pct,
            huey_label,
            Goal("ours", "<", 2.0, "%"),
        ),
        Row(f"idle RSS, all processes ({target})", "MB", ours_rss_mb, huey_rss_mb, huey_label),
    ]
    return result
