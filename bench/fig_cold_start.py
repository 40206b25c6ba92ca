"""Figure 1 — CLI cold start: whole ``tm`` processes against bare interpreter start and Huey's CLI.

``tm enqueue`` validates a flow once and then reuses the cached snapshot while the flow is
unchanged (docs/daemon.md §2): the timed runs after the warm-up are cache hits, as for a script
that enqueues one flow over and over. The cache lives in the run's scratch directory, and one
row runs with the cache off to show what validating costs each time.
"""

from __future__ import annotations

from bench.context import Context
from bench.core import FigureResult, Goal, Row, median, paired_ratio
from bench.env import huey_env, ours_env, run_timed
from bench.workload import write_noop_flow, write_noop_flow_json

GOAL = Goal("ratio", "<=", 2.5)
TIMEOUT_S = 60.0


def run(ctx: Context) -> FigureResult:
    p = ctx.programs
    result = FigureResult(1, "cold_start", "CLI cold start (whole process, ms)")
    work = ctx.new_dir("cold-")
    flow_yaml, flow_json = write_noop_flow(work), write_noop_flow_json(work)
    ours = {**ours_env(work / "data"), "XDG_CACHE_HOME": str(work / "cache")}
    uncached = {**ours, "TM_FLOW_CACHE": "0"}
    theirs = huey_env(work / "huey.db")
    enqueue_yaml = [p.tm, "enqueue", str(flow_yaml), "-i", '{"i":1}']
    commands = {
        "python3 -c pass": ([p.python, "-c", "pass"], ours),
        "tm enqueue (YAML flow)": (enqueue_yaml, ours),
        "huey_consumer --help": ([p.huey_consumer, "--help"], theirs),
        "tm --help": ([p.tm, "--help"], ours),
        "tm enqueue (JSON flow)": ([p.tm, "enqueue", str(flow_json), "-i", '{"i":1}'], ours),
        "tm enqueue (YAML flow, no cache)": (enqueue_yaml, uncached),
    }
    samples: dict[str, list[float]] = {name: [] for name in commands}
    for cmd, env in commands.values():  # warm the page cache and the .pyc files
        run_timed(cmd, env=env, timeout_s=TIMEOUT_S)
    for _ in range(ctx.sizes.cold_start_samples):
        for name, (cmd, env) in commands.items():
            elapsed_s = run_timed(cmd, env=env, timeout_s=TIMEOUT_S).elapsed_s
            samples[name].append(1000 * elapsed_s)
    result.samples = samples
    result.values = {f"{name} median ms": median(s) for name, s in samples.items()}
    result.params = {"samples_per_command": ctx.sizes.cold_start_samples}
    bare = median(samples["python3 -c pass"])
    huey = median(samples["huey_consumer --help"])
    ungoaled = ("tm enqueue (JSON flow)", "tm enqueue (YAML flow, no cache)")
    for name in ("tm enqueue (YAML flow)", "tm --help", *ungoaled):
        ours_ms = median(samples[name])
        goal = GOAL if name not in ungoaled else None
        paired = paired_ratio(samples[name], samples["python3 -c pass"])
        result.rows.append(Row(name, "ms", ours_ms, bare, "python3 -c pass", goal, "", paired))
    for name in ("tm enqueue (YAML flow)", "tm --help"):
        paired = paired_ratio(samples[name], samples["huey_consumer --help"])
        result.rows.append(
            Row(name, "ms", median(samples[name]), huey, "huey_consumer --help", None, "", paired)
        )
    return result
