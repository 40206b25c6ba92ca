"""Figure 12 — ``tm queue stats`` (whole process) with many dead letters against none.

Two queues, each with an empty ``pending/``: one whose dead-letter directory holds
``dead`` entries (written as workers write them, by a process that then exits), one with none.
Timed first with no daemon (what the writers left: a process that wrote dead letters counts them
into the census as it exits), then with a census refreshed as a daemon does once the DLQ
directory had been unchanged for 2 s and nothing running (what the census can give), then with
a daemon running on each (which refreshes the census every second), interleaved none, many,
none, many, …
"""

from __future__ import annotations

import time
from pathlib import Path

from bench.backlog import LoggedDaemon, seed_ours
from bench.context import Context
from bench.core import BenchError, FigureResult, Goal, Row, median, paired_ratio
from bench.env import CHILDREN_DIR, last_json, ours_env, run_timed
from bench.fig_inspect import CENSUS_WAIT_S, timed_ms
from bench.workload import write_noop_flow


def refresh_census(data: Path) -> None:
    """What the daemon's supervisor does every second (``queue.maintain()``), once."""
    from tracemind import config
    from tracemind.backend.file.stores import open_stores
    from tracemind.backend.location import data_location

    open_stores(
        config.DataDirs.of(*data_location(env=ours_env(data)).file_dirs()), durable=False
    ).queue.refresh_census()


def run(ctx: Context) -> FigureResult:
    dead = ctx.backlog.dead
    result = FigureResult(12, "dlq", f"`tm queue stats` with {dead:,} dead letters vs none (ms)")
    work = ctx.new_dir("dlq-")
    flow = write_noop_flow(work)
    none_data, many_data = work / "none", work / "many"
    for data in (none_data, many_data):
        seed_ours(ctx, data, flow, 0)  # the directories, no task
    ctx.say(f"dlq: writing {dead:,} dead-letter entries")
    seeded = run_timed(
        [ctx.programs.python, str(CHILDREN_DIR / "ours_dead.py"), str(flow), str(dead)],
        env=ours_env(many_data),
        timeout_s=3600,
        capture=True,
    )
    seed_s = float(last_json(seeded.stdout)["seconds"])
    cmd = [ctx.programs.tm, "queue", "stats", "--json"]
    envs = {"none": ours_env(none_data), "many": ours_env(many_data)}
    samples: dict[str, list[float]] = {}

    def measure(phase: str) -> None:
        for _ in range(ctx.backlog.inspect_samples):
            for side, env in envs.items():
                samples.setdefault(f"{phase} {side}", []).append(timed_ms(cmd, env, True))

    measure("no daemon")
    time.sleep(CENSUS_WAIT_S)  # the DLQ directory settles
    for data in (none_data, many_data):
        refresh_census(data)
    measure("refreshed census, no daemon")
    with LoggedDaemon(ctx, none_data), LoggedDaemon(ctx, many_data):
        time.sleep(CENSUS_WAIT_S)
        if not (many_data / "queue" / "census.json").exists():
            raise BenchError("dlq: the daemon wrote no census.json")
        measure("live daemon")
    result.samples = samples
    result.params = {"dead": dead, "seed s": seed_s, "samples": ctx.backlog.inspect_samples}
    result.values = {f"{key} median ms": median(s) for key, s in samples.items()}
    result.rows = [
        Row(
            f"`tm queue stats`, {phase}: {dead:,} dead letters ÷ none",
            "ms",
            median(samples[f"{phase} many"]),
            median(samples[f"{phase} none"]),
            "no dead letters",
            Goal("ratio", "<=", 1.5),
            paired_ratio=paired_ratio(samples[f"{phase} many"], samples[f"{phase} none"]),
        )
        for phase in ("no daemon", "refreshed census, no daemon", "live daemon")
    ]
    return result
