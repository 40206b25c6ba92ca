"""Figure 8 — inspecting a deep backlog: ``tm queue stats``, ``tm daemon ps`` and ``tm task show``
(whole processes) on the deep queue against the same commands on an empty one, and the status
server's ``/status`` and ``/metrics`` at depth.

Two states of each queue, in this order:

1. **no daemon**: nothing but ``tm``/library enqueues ever wrote the queue (a queue a daemon has
   never served); readers have only the ``census.json`` those writers kept (up to the buckets
   that settled before their last pass);
2. **live daemon**: a daemon (2 workers, status server) runs on each queue and has refreshed the
   census; its workers are stopped (SIGSTOP) once they are up, so the backlog stays deep and the
   commands do not compete with them for the CPU. The daemons' own cost while idle at that depth
   (mostly the census refresh, once a second) is measured over a quiet window first.

The "empty" queue holds one task (so ``tm task show`` has something to show). Commands run
interleaved empty, deep, empty, deep, …; each ratio is the median of the per-pair ratios.
``tm task show`` of an id that exists nowhere is timed too (it must look everywhere).
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from bench.backlog import LoggedDaemon, deep_queue, free_port, probe, seed_ours, wait_answering
from bench.context import Context
from bench.core import BenchError, FigureResult, Goal, Row, median, paired_ratio, percentile
from bench.env import ours_env
from bench.procstat import cpu_between, usage
from bench.workload import write_noop_flow

PROBE_PATHS = ("/status", "/metrics")
PROBE_RATE_PER_S = 50.0
CENSUS_WAIT_S = 5.0
"""A bucket is cached once it has been quiet for 2 s (census.SETTLE_S) and the daemon refreshed
the census after that (once a second)."""
QUIET_S = 5.0
UNKNOWN_ID = "000000000000" + "0000" + "abcdef"  # a well-formed id of no task
COMMAND_TIMEOUT_S = 600.0


def timed_ms(cmd: list[str], env: dict[str, str], expect_ok: bool) -> float:
    """Milliseconds from spawn to exit; BenchError unless it exits as expected (0, or nonzero
    with one line naming the task as not found)."""
    started = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, timeout=COMMAND_TIMEOUT_S, check=False)
    elapsed_ms = 1000 * (time.perf_counter() - started)
    # (`tm daemon ps` exits 3 when no daemon runs: its answer on a queue no daemon serves)
    no_daemon = cmd[1:3] == ["daemon", "ps"] and done.returncode == 3
    if expect_ok and done.returncode != 0 and not no_daemon:
        raise BenchError(f"`{' '.join(cmd[1:4])}` exited {done.returncode}: {done.stderr[-300:]!r}")
    # (with --json the error is a JSON document on stdout)
    if not expect_ok and (done.returncode == 0 or b"not found" not in done.stdout + done.stderr):
        raise BenchError(f"`{' '.join(cmd[1:4])}` did not report a missing task: {done.stderr!r}")
    return elapsed_ms


def commands(tm: str, data: Path, task_id: str) -> dict[str, tuple[list[str], bool]]:
    """The timed commands on the queue in ``data`` (label → argv, whether it exits 0)."""
    return {
        "tm queue stats": ([tm, "queue", "stats", "--json"], True),
        "tm daemon ps": ([tm, "daemon", "ps", "--json", "--state-dir", str(data / "state")], True),
        "tm task show (a pending task)": ([tm, "task", "show", task_id, "--json"], True),
        "tm task show (an unknown id)": ([tm, "task", "show", UNKNOWN_ID, "--json"], False),
    }


def env_of(data: Path) -> dict[str, str]:
    env = ours_env(data)
    env["TM_ENABLE_DAEMON"] = "1"
    return env


def time_commands(
    ctx: Context, empty: tuple[Path, str], deep: tuple[Path, str], phase: str
) -> dict[str, list[float]]:
    """Every command, interleaved on both queues; samples keyed "<phase> <side> <label>"."""
    tm = ctx.programs.tm
    sides = {"empty": empty, "deep": deep}
    argv = {side: commands(tm, data, task_id) for side, (data, task_id) in sides.items()}
    env = {side: env_of(data) for side, (data, _) in sides.items()}
    samples: dict[str, list[float]] = {}
    for _ in range(ctx.backlog.inspect_samples):
        for label in argv["empty"]:
            for side in sides:
                cmd, ok = argv[side][label]
                key = f"{phase} {side} {label}"
                samples.setdefault(key, []).append(timed_ms(cmd, env[side], ok))
    return samples


def queue_depth(data: Path) -> int:
    from tracemind import config
    from tracemind.backend.file.stores import open_stores
    from tracemind.backend.location import data_location

    stats = open_stores(
        config.DataDirs.of(*data_location(env=ours_env(data)).file_dirs()), durable=False
    ).queue.stats()
    return stats.pending + stats.delayed + stats.inflight


def run(ctx: Context) -> FigureResult:
    depth = ctx.backlog.depth
    result = FigureResult(8, "inspect", f"Inspecting a queue of {depth:,} pending vs an empty one")
    work = ctx.new_dir("inspect-")
    flow = write_noop_flow(work)
    empty_data = work / "empty"
    seeded = seed_ours(ctx, empty_data, flow, 1)
    ids = seeded["ids"]
    assert isinstance(ids, dict)
    empty = (empty_data, str(ids["first"]))
    deep_q = deep_queue(ctx)
    deep = (deep_q.data, deep_q.middle_id)
    if any((deep_q.data / "queue" / "registry").glob("*.json")):
        raise BenchError("inspect: a daemon or pool already served the deep queue")

    ctx.say("inspect: commands on a queue no daemon has served")
    samples = time_commands(ctx, empty, deep, "no daemon")
    depth_no_census = queue_depth(deep_q.data)

    ctx.say("inspect: commands with a live daemon (workers stopped)")
    ports = {"empty": free_port(), "deep": free_port()}
    with (
        LoggedDaemon(ctx, empty_data, status_port=ports["empty"]) as empty_daemon,
        LoggedDaemon(ctx, deep_q.data, status_port=ports["deep"]) as deep_daemon,
    ):
        paused = empty_daemon.pause_workers() + deep_daemon.pause_workers()
        if paused != 4:
            raise BenchError(f"inspect: stopped {paused} workers, expected 4")
        time.sleep(CENSUS_WAIT_S)
        if not (deep_q.data / "queue" / "census.json").exists():
            raise BenchError("inspect: the daemon wrote no census.json")
        before = usage(empty_daemon.pid), usage(deep_daemon.pid)
        time.sleep(QUIET_S)
        after = usage(empty_daemon.pid), usage(deep_daemon.pid)
        daemon_cpu = {
            side: 100 * cpu_between(b, a) / QUIET_S
            for side, b, a in zip(("empty", "deep"), before, after, strict=True)
        }
        depth_live = queue_depth(deep_q.data)
        samples.update(time_commands(ctx, empty, deep, "live daemon"))
        latency: dict[str, dict[str, list[float]]] = {}
        for side, port in ports.items():
            wait_answering(port, 30.0)
            ctx.say(
                f"inspect: /status and /metrics, {side} queue ({ctx.backlog.probe_window_s:g} s)"
            )
            latency[side] = probe(port, PROBE_PATHS, ctx.backlog.probe_window_s, PROBE_RATE_PER_S)
    census_bytes = os.path.getsize(deep_q.data / "queue" / "census.json")

    result.samples = samples
    result.params = {
        "depth": depth,
        "pending, no daemon": depth_no_census,
        "pending with the live daemon": depth_live,
        "census.json bytes": census_bytes,
        "samples per command": ctx.backlog.inspect_samples,
        "probe failures": {side: len(lat["failures"]) for side, lat in latency.items()},
    }
    values = {f"{key} median ms": median(s) for key, s in samples.items()}
    values["daemon cpu % idle, workers stopped, empty"] = daemon_cpu["empty"]
    values["daemon cpu % idle, workers stopped, deep"] = daemon_cpu["deep"]
    rows: list[Row] = []
    for phase in ("no daemon", "live daemon"):
        for label in commands("tm", Path(), ""):
            deep_s = samples[f"{phase} deep {label}"]
            empty_s = samples[f"{phase} empty {label}"]
            rows.append(
                Row(
                    f"{label}, {phase}: {depth:,} pending ÷ empty",
                    "ms",
                    median(deep_s),
                    median(empty_s),
                    "empty queue",
                    None if "unknown" in label else Goal("ratio", "<=", 1.5),
                    paired_ratio=paired_ratio(deep_s, empty_s),
                )
            )
    for path in PROBE_PATHS:
        for side in ("deep", "empty"):
            lat = latency[side][path]
            values[f"live daemon {side} {path} p50 ms"] = median(lat)
            values[f"live daemon {side} {path} p99 ms"] = percentile(lat, 99)
            result.samples[f"live daemon {side} {path} ms"] = lat
        rows.append(
            Row(
                f"`GET {path}` p99 at {depth:,} pending (live daemon, workers stopped)",
                "ms",
                values[f"live daemon deep {path} p99 ms"],
                values[f"live daemon empty {path} p99 ms"],
                "empty queue",
                Goal("ours", "<", 20.0, " ms"),
            )
        )
    rows.append(
        Row(
            f"daemon CPU, idle workers, {depth:,} pending ÷ empty (census refresh)",
            "%",
            daemon_cpu["deep"],
            daemon_cpu["empty"],
            "daemon on the empty queue",
        )
    )
    result.values = values
    result.rows = rows
    return result
