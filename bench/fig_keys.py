"""Figure 10 — a batch with idempotency keys against the same batch without (whole processes,
durable): ``tm enqueue FLOW --inputs FILE --idempotency-key-field key`` vs ``tm enqueue FLOW
--inputs FILE``, each into a fresh queue, interleaved. Then the keyed batch submitted again
into its queue: every key is a duplicate of a pending task (the duplicate check, under each
key's lock, must not search the backlog).
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.context import Context
from bench.core import BenchError, FigureResult, Goal, Row, median, paired_ratio
from bench.env import ours_env, run_timed
from bench.workload import write_noop_flow

TIMEOUT_S = 600.0


def write_keyed_inputs(directory: Path, count: int) -> Path:
    path = directory / f"keyed-{count}.jsonl"
    path.write_text("".join(json.dumps({"i": i, "key": f"order-{i}"}) + "\n" for i in range(count)))
    return path


def run(ctx: Context) -> FigureResult:
    n = ctx.backlog.keyed_batch
    result = FigureResult(10, "keys", f"A batch of {n:,} tasks with and without idempotency keys")
    work = ctx.new_dir("keys-")
    flow = write_noop_flow(work)
    keyed = write_keyed_inputs(work, n)
    plain = work / "plain.jsonl"
    plain.write_text(keyed.read_text())  # the same lines: only the key field's use differs
    tm = ctx.programs.tm
    samples: dict[str, list[float]] = {"plain s": [], "keyed s": [], "duplicates s": []}
    for round_no in range(ctx.rounds):
        ctx.say(f"keys: round {round_no + 1}/{ctx.rounds}")
        env = ours_env(ctx.new_dir("plain-"))
        cmd = [tm, "enqueue", str(flow), "--inputs", str(plain)]
        samples["plain s"].append(run_timed(cmd, env=env, timeout_s=TIMEOUT_S).elapsed_s)
        env = ours_env(ctx.new_dir("keyed-"))
        cmd = [tm, "enqueue", str(flow), "--inputs", str(keyed), "--idempotency-key-field", "key"]
        samples["keyed s"].append(run_timed(cmd, env=env, timeout_s=TIMEOUT_S).elapsed_s)
        done = run_timed(cmd, env=env, timeout_s=TIMEOUT_S, capture=True)
        if f"enqueued 0 task(s), {n} duplicate(s)" not in done.stdout:
            raise BenchError(f"keys: resubmission was not all duplicates: {done.stdout[-200:]!r}")
        samples["duplicates s"].append(done.elapsed_s)
    result.samples = samples
    result.params = {"tasks": n}
    result.values = {f"{key} median": median(s) for key, s in samples.items()}
    result.rows = [
        Row(
            f"batch of {n:,} with keys ÷ without (`tm enqueue --inputs`, whole process)",
            "s",
            median(samples["keyed s"]),
            median(samples["plain s"]),
            "the same batch without keys",
            Goal("ratio", "<=", 1.5),
            paired_ratio=paired_ratio(samples["keyed s"], samples["plain s"]),
        ),
        Row(
            f"the keyed batch again ({n:,} duplicates of pending tasks) ÷ the first time",
            "s",
            median(samples["duplicates s"]),
            median(samples["keyed s"]),
            "the keyed batch, new keys",
            paired_ratio=paired_ratio(samples["duplicates s"], samples["keyed s"]),
        ),
    ]
    return result
