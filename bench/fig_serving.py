"""Figure 13 — serving a deep backlog: the latency of every probe route (``/livez``,
``/readyz``, ``/status``, ``/metrics``) while 2 workers drain a queue of ``depth`` pending
tasks, and ``tm queue stats`` on that queue (before any daemon served it, and while the daemon
drains it) beside the same command on an empty queue.

The daemon (``tm daemon start --foreground``, 2 workers, status server) starts on the deep
queue; the probes begin once ``skip`` tasks succeeded (start-up is never measured) and go on
for ``probe_window_s`` at ``PROBE_RATE_PER_S`` (one client, a new connection per request, the
routes in turn, as a prober or scraper does). ``tm queue stats --json`` runs as a whole
process, interleaved empty/deep, ``inspect_samples`` times in each phase. The queue's depth at
the start and the end of the probe window is recorded (it must still be deep at the end).
"""

from __future__ import annotations

from pathlib import Path

from bench.backlog import LoggedDaemon, deep_queue, free_port, probe, seed_ours, wait_answering
from bench.context import Context
from bench.core import BenchError, FigureResult, Goal, Row, median, paired_ratio, percentile
from bench.fig_inspect import env_of, queue_depth, timed_ms
from bench.workload import write_noop_flow

PROBE_PATHS = ("/livez", "/readyz", "/status", "/metrics")
PROBE_RATE_PER_S = 50.0
P99_GOAL_MS = 20.0


def stats_samples(ctx: Context, empty: Path, deep: Path, phase: str) -> dict[str, list[float]]:
    """``tm queue stats --json`` on both queues, interleaved."""
    samples: dict[str, list[float]] = {}
    for _ in range(ctx.backlog.inspect_samples):
        for side, data in (("empty", empty), ("deep", deep)):
            cmd = [ctx.programs.tm, "queue", "stats", "--json"]
            samples.setdefault(f"{phase} {side} tm queue stats", []).append(
                timed_ms(cmd, env_of(data), True)
            )
    return samples


def run(ctx: Context) -> FigureResult:
    depth = ctx.backlog.depth
    result = FigureResult(
        13, "serving", f"Probes and `tm queue stats` while 2 workers drain {depth:,} pending"
    )
    work = ctx.new_dir("serving-")
    empty = work / "empty"
    seed_ours(ctx, empty, write_noop_flow(work), 1)
    deep = deep_queue(ctx)
    deep.drained = True  # the daemon below drains it: no later figure may take it as built
    samples = stats_samples(ctx, empty, deep.data, "no daemon")
    pending_at_start = queue_depth(deep.data)

    port = free_port()
    with LoggedDaemon(ctx, deep.data, status_port=port) as daemon:
        wait_answering(port, 30.0)
        daemon.wait_succeeded(ctx.backlog.skip, 120.0)
        before_probes = queue_depth(deep.data)
        ctx.say(f"serving: probing {', '.join(PROBE_PATHS)} for {ctx.backlog.probe_window_s:g} s")
        latency = probe(port, PROBE_PATHS, ctx.backlog.probe_window_s, PROBE_RATE_PER_S)
        after_probes = queue_depth(deep.data)
        samples.update(stats_samples(ctx, empty, deep.data, "draining"))
        after_stats = queue_depth(deep.data)
    if after_stats < depth // 4:
        raise BenchError(f"serving: the backlog fell to {after_stats:,} during the measurements")

    for path in PROBE_PATHS:
        samples[f"draining {path} ms"] = latency[path]
    result.samples = samples
    result.params = {
        "depth": depth,
        "pending before any daemon": pending_at_start,
        "pending when the probes began": before_probes,
        "pending when the probes ended": after_probes,
        "pending after the last tm queue stats": after_stats,
        "probe rate per s": PROBE_RATE_PER_S,
        "probe window s": ctx.backlog.probe_window_s,
        "probe failures": len(latency["failures"]),
        "stats samples per queue and phase": ctx.backlog.inspect_samples,
    }
    values: dict[str, float] = {}
    for path in PROBE_PATHS:
        values[f"draining {path} p50 ms"] = median(latency[path])
        values[f"draining {path} p99 ms"] = percentile(latency[path], 99)
        result.rows.append(
            Row(
                f"`GET {path}` p99 while 2 workers drain {depth:,} pending",
                "ms",
                values[f"draining {path} p99 ms"],
                goal=Goal("ours", "<", P99_GOAL_MS, " ms"),
                note=f"p50 {values[f'draining {path} p50 ms']:.2f} ms, "
                f"{len(latency[path])} requests",
            )
        )
    for phase in ("no daemon", "draining"):
        deep_ms = samples[f"{phase} deep tm queue stats"]
        empty_ms = samples[f"{phase} empty tm queue stats"]
        values[f"{phase} deep tm queue stats median ms"] = median(deep_ms)
        values[f"{phase} empty tm queue stats median ms"] = median(empty_ms)
        result.rows.append(
            Row(
                f"`tm queue stats`, {phase}: {depth:,} pending ÷ empty",
                "ms",
                median(deep_ms),
                median(empty_ms),
                "empty queue (one task)",
                paired_ratio=paired_ratio(deep_ms, empty_ms),
            )
        )
    result.values = values
    return result
