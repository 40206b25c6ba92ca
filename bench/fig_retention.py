"""Figure 14 — disk use per task before and after a retention pass: ``tasks`` no-op tasks are
enqueued (library batches, with an idempotency key each, as triggers and keyed clients submit)
and drained by the daemon; then the data root (without the daemon's state dir) is measured:
bytes allocated (``st_blocks``, directories included), apparent bytes, and files. A retention
pass then runs as it would 8 days later (``Backend.prune`` with that time, the default policy:
results 7 days, keys 1 day) and the data root is measured again.

Per task = the data root's total ÷ ``tasks`` (a fresh data root holds a few fixed files only).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from bench.backlog import LoggedDaemon
from bench.context import Context
from bench.core import BenchError, FigureResult, Row
from bench.env import CHILDREN_DIR, last_json, ours_env, run_timed
from bench.workload import write_noop_flow

DAY_S = 86_400.0
DRAIN_TIMEOUT_S = 900.0


def disk_use(data: Path) -> dict[str, int]:
    """Allocated and apparent bytes, files and directories under ``data`` (not ``state/``)."""
    use = {"allocated bytes": 0, "apparent bytes": 0, "files": 0, "directories": 0}
    for root, dirs, files in os.walk(data):
        if Path(root) == data and "state" in dirs:
            dirs.remove("state")
        for name in dirs:
            info = os.lstat(os.path.join(root, name))
            use["allocated bytes"] += info.st_blocks * 512
            use["directories"] += 1
        for name in files:
            info = os.lstat(os.path.join(root, name))
            use["allocated bytes"] += info.st_blocks * 512
            use["apparent bytes"] += info.st_size
            use["files"] += 1
    return use


def run(ctx: Context) -> FigureResult:
    from tracemind.backend import Location, open_backend

    tasks = ctx.backlog.retention_tasks
    result = FigureResult(14, "retention", f"Disk per task: {tasks:,} succeeded, then a pass")
    work = ctx.new_dir("retention-")
    data = work / "data"
    flow = write_noop_flow(work)
    seeded = run_timed(
        [ctx.programs.python, str(CHILDREN_DIR / "ours_seed.py"), str(flow), str(tasks),
         str(ctx.backlog.build_chunk), "--keys"],
        env=ours_env(data),
        timeout_s=DRAIN_TIMEOUT_S,
        capture=True,
    )  # fmt: skip
    with LoggedDaemon(ctx, data) as daemon:
        daemon.wait_succeeded(tasks, DRAIN_TIMEOUT_S)
    before = disk_use(data)
    backend = open_backend(Location.for_root(str(data)), durable=False)
    later_s = time.time() + 8 * DAY_S
    counted = backend.prune(now_s=later_s, budget=10 * tasks + 1000)
    backend.close()
    after = disk_use(data)
    if counted["results"] != tasks or counted["keys"] != tasks:
        raise BenchError(f"retention: the pass removed {dict(counted)} of {tasks:,} tasks")

    result.params = {
        "tasks": tasks,
        "seed s": last_json(seeded.stdout)["seconds"],
        "removed by the pass": dict(counted),
        "before": before,
        "after": after,
    }
    result.values = {
        f"{when} {key} per task": use[key] / tasks
        for when, use in (("before", before), ("after", after))
        for key in use
    }
    for key in ("allocated bytes", "files"):
        result.rows.append(
            Row(
                f"{key} per task: after a retention pass ÷ before",
                key.split()[-1],
                after[key] / tasks,
                before[key] / tasks,
                f"before the pass ({tasks:,} keyed tasks succeeded)",
                note=f"{before[key]:,} → {after[key]:,} in all",
            )
        )
    return result
