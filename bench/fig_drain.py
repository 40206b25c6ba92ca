"""Figure 4 — end-to-end drain of N pre-seeded no-op tasks with 2 worker processes.

Two spans, each with a goal of twice Huey's rate: the drain window (first claim to last
completion, measured inside each side) and the whole process (``tm workers start -n 2 --burst``
against ``huey_consumer``, from spawn to exit, start-up and shut-down included).

Ours: ``tm workers start -n 2 --burst`` (exits once the queue is empty); first claim and last
completion come from its JSON log (the first ``task started``; the last ``acks committed``, when
the last group of results became durable). Huey: ``huey_consumer
huey_app.huey -w 2 -k process`` on SqliteHuey; its tasks' signal handlers detect completion inside
the consumer and stop it (see children/huey_app.py). Both sides log to a file.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.context import Context
from bench.core import BenchError, FigureResult, Goal, Row, median, paired_ratio
from bench.env import CHILDREN_DIR, huey_env, ours_env, run_timed
from bench.tmlogs import TaskTimes
from bench.workload import write_inputs, write_noop_flow

TIMEOUT_S = 600.0
GOAL = Goal("ratio", ">=", 2.0)


def ours_drain(ctx: Context, flow: Path, inputs: Path, n: int) -> tuple[float, float]:
    """(seconds from first claim to last completion, seconds of the whole pool process)."""
    data = ctx.new_dir("ours-")
    env = ours_env(data)
    tm = ctx.programs.tm
    run_timed([tm, "enqueue", str(flow), "--inputs", str(inputs)], env=env, timeout_s=TIMEOUT_S)
    log = data / "workers.log"
    done = run_timed(
        [tm, "workers", "start", "-n", "2", "--burst"],
        env=env,
        timeout_s=TIMEOUT_S,
        stdout_path=log,
        stderr_path=data / "workers.err",
    )
    with open(log, "rb") as lines:
        times = TaskTimes.from_lines(lines)
    if len(times.succeeded_s) != n:
        raise BenchError(f"drain: {len(times.succeeded_s)} of {n} tasks succeeded (ours)")
    window_s = times.last_done_s - min(times.started_s.values())
    return window_s, done.elapsed_s


def huey_drain(ctx: Context, n: int) -> tuple[float, float]:
    data = ctx.new_dir("huey-")
    report = data / "report.json"
    env = huey_env(data / "huey.db", BENCH_HUEY_TARGET=str(n), BENCH_HUEY_REPORT=str(report))
    seed_env = huey_env(data / "huey.db")
    script = str(CHILDREN_DIR / "huey_enqueue.py")
    run_timed([ctx.programs.huey_python, script, str(n)], env=seed_env, timeout_s=TIMEOUT_S)
    done = run_timed(
        [ctx.programs.huey_consumer, "huey_app.huey", "-w", "2", "-k", "process"],
        env=env,
        timeout_s=TIMEOUT_S,
        stderr_path=data / "consumer.log",
    )
    if not report.exists():
        raise BenchError("drain: the Huey consumer exited without completing every task")
    times = json.loads(report.read_text())
    return float(times["last_done_s"]) - float(times["first_claim_s"]), done.elapsed_s


def run(ctx: Context) -> FigureResult:
    n = ctx.sizes.drain_tasks
    result = FigureResult(4, "drain", f"End-to-end drain of {n:,} no-op tasks, 2 workers (tasks/s)")
    keys = ("ours window s", "ours total s", "huey window s", "huey total s")
    samples: dict[str, list[float]] = {key: [] for key in keys}
    work = ctx.new_dir("drain-")
    flow, inputs = write_noop_flow(work), write_inputs(work, n)
    for round_no in range(ctx.rounds):
        ctx.say(f"drain: round {round_no + 1}/{ctx.rounds}")
        window_s, total_s = ours_drain(ctx, flow, inputs, n)
        samples["ours window s"].append(window_s)
        samples["ours total s"].append(total_s)
        window_s, total_s = huey_drain(ctx, n)
        samples["huey window s"].append(window_s)
        samples["huey total s"].append(total_s)
    result.samples = samples
    result.params = {"tasks": n, "workers": 2}
    result.values = {f"{key} median": median(s) for key, s in samples.items()}
    rate = {key: n / median(s) for key, s in samples.items()}
    for side in ("ours", "huey"):
        for span in ("window", "total"):
            result.values[f"{side} {span} tasks/s"] = rate[f"{side} {span} s"]
    huey_label = "huey_consumer -w 2 -k process (SqliteHuey)"
    result.rows = [
        Row(
            f"drain, {span_label}",
            "tasks/s",
            rate[f"ours {span} s"],
            rate[f"huey {span} s"],
            huey_label,
            GOAL,  # drain throughput, and the whole burst run (docs/benchmarks.md)
            # A rate ratio is the inverse ratio of the times.
            paired_ratio=paired_ratio(samples[f"huey {span} s"], samples[f"ours {span} s"]),
        )
        for span, span_label in (
            ("window", "first claim → last result durable"),
            ("total", "whole process (start → exit)"),
        )
    ]
    return result
