"""Figure 2 — durable enqueue of N tasks (per task and as one batch) vs SqliteHuey's per-task
enqueue, and in-process claim + ack. Rates are tasks per second of the whole process."""

from __future__ import annotations

from pathlib import Path

from bench.context import Context
from bench.core import FigureResult, Goal, Row, median, paired_ratio
from bench.env import CHILDREN_DIR, huey_env, last_json, ours_env, run_timed
from bench.workload import write_inputs, write_noop_flow

TIMEOUT_S = 600.0
HUEY = "SqliteHuey per-task, default settings"


def ours_per_task(ctx: Context, flow: Path, count: int) -> tuple[float, float]:
    """(whole-process rate, in-loop rate) of the library's per-task durable enqueue."""
    data = ctx.new_dir("per-task-")
    script = str(CHILDREN_DIR / "ours_enqueue.py")
    done = run_timed(
        [ctx.programs.python, script, str(flow), str(count)],
        env=ours_env(data),
        timeout_s=TIMEOUT_S,
        capture=True,
    )
    return count / done.elapsed_s, float(last_json(done.stdout)["rate"])


def huey_per_task(ctx: Context, count: int) -> tuple[float, float]:
    data = ctx.new_dir("huey-")
    script = str(CHILDREN_DIR / "huey_enqueue.py")
    done = run_timed(
        [ctx.programs.huey_python, script, str(count)],
        env=huey_env(data / "huey.db"),
        timeout_s=TIMEOUT_S,
        capture=True,
    )
    return count / done.elapsed_s, float(last_json(done.stdout)["rate"])


def ours_batch(ctx: Context, flow: Path, inputs: Path, count: int) -> float:
    data = ctx.new_dir("batch-")
    done = run_timed(
        [ctx.programs.tm, "enqueue", str(flow), "--inputs", str(inputs)],
        env=ours_env(data),
        timeout_s=TIMEOUT_S,
    )
    return count / done.elapsed_s


def ours_claim_ack(ctx: Context, flow: Path, count: int) -> float:
    """In-loop rate of lease + ack (the seeding of the queue is not timed)."""
    data = ctx.new_dir("claim-")
    script = str(CHILDREN_DIR / "ours_claim_ack.py")
    done = run_timed(
        [ctx.programs.python, script, str(flow), str(count)],
        env=ours_env(data),
        timeout_s=TIMEOUT_S,
        capture=True,
    )
    return float(last_json(done.stdout)["rate"])


def run(ctx: Context) -> FigureResult:
    n = ctx.sizes.enqueue_tasks
    result = FigureResult(2, "enqueue", f"Durable enqueue of {n:,} tasks (tasks/s)")
    samples: dict[str, list[float]] = {
        key: []
        for key in (
            "ours per-task, whole process",
            "ours per-task, in loop",
            "huey per-task, whole process",
            "huey per-task, in loop",
            "ours batch, whole process",
            "ours claim+ack, in loop",
        )
    }
    work = ctx.new_dir("enqueue-")
    flow, inputs = write_noop_flow(work), write_inputs(work, n)
    for round_no in range(ctx.rounds):
        ctx.say(f"enqueue: round {round_no + 1}/{ctx.rounds}")
        whole, loop = ours_per_task(ctx, flow, n)
        samples["ours per-task, whole process"].append(whole)
        samples["ours per-task, in loop"].append(loop)
        whole, loop = huey_per_task(ctx, n)
        samples["huey per-task, whole process"].append(whole)
        samples["huey per-task, in loop"].append(loop)
        samples["ours batch, whole process"].append(ours_batch(ctx, flow, inputs, n))
    # Claim + ack deletes files: measured after every enqueue round (see Context.scratch).
    for round_no in range(ctx.rounds):
        ctx.say(f"claim+ack: round {round_no + 1}/{ctx.rounds}")
        claim = ours_claim_ack(ctx, flow, ctx.sizes.claim_ack_tasks)
        samples["ours claim+ack, in loop"].append(claim)
    result.samples = samples
    result.values = {f"{key} median tasks/s": median(s) for key, s in samples.items()}
    result.params = {"tasks": n, "claim_ack_tasks": ctx.sizes.claim_ack_tasks}
    huey_samples = samples["huey per-task, whole process"]
    huey = median(huey_samples)
    result.rows = [
        Row(
            "batch enqueue (`tm enqueue --inputs`, whole process)",
            "tasks/s",
            median(samples["ours batch, whole process"]),
            huey,
            HUEY,
            Goal("ratio", ">=", 3.0),
            paired_ratio=paired_ratio(samples["ours batch, whole process"], huey_samples),
        ),
        Row(
            "per-task enqueue (library `submit` per task, whole process)",
            "tasks/s",
            median(samples["ours per-task, whole process"]),
            huey,
            HUEY,
            None,  # no goal: one enqueue that returns durable pays two flushes (see the docs)
            paired_ratio=paired_ratio(samples["ours per-task, whole process"], huey_samples),
        ),
        Row(
            "in-process claim + ack (`queue.lease` + `queue.ack`)",
            "tasks/s",
            median(samples["ours claim+ack, in loop"]),
            goal=Goal("ours", ">=", 10_000, "/s"),
        ),
    ]
    return result
