"""Figure 11 — durable enqueue without scratch isolation, against SqliteHuey's per-task enqueue:
our batch (``tm enqueue --inputs``) and our per-task enqueue (the library's ``submit``, one
task per call, in one process), whole processes.

Figure 2 gives every measurement a directory in a block group of its own (``chattr +T`` on the
run directory). Here the directories are fresh but share one ordinary parent, and just before
each measurement (either side's) the disk does other work there: ``other_work_files`` small files
are written, synced and deleted, as a job finishing and cleaning up would. On ext4 without a
journal the next creations in that block group then pay for the recently freed inodes (see
docs/benchmarks.md, "Scratch isolation"). The same measurements with isolation run in the same
rounds, for comparison.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from bench.context import Context
from bench.core import FigureResult, Goal, Row, median, paired_ratio
from bench.fig_enqueue import HUEY, huey_per_task, ours_batch, ours_per_task
from bench.workload import write_inputs, write_noop_flow


def other_work(area: Path, files: int) -> None:
    """Write, sync and delete ``files`` small files in a fresh directory of ``area``."""
    job = area / f"job-{os.urandom(4).hex()}"
    job.mkdir()
    for i in range(files):
        fd = os.open(job / f"{i}.out", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"x" * 600)
        finally:
            os.close(fd)
    os.sync()
    shutil.rmtree(job)


class Plain:
    """A :class:`Context` look-alike whose ``new_dir`` gives directories of one ordinary parent,
    after the disk did other work there."""

    def __init__(self, ctx: Context, area: Path) -> None:
        self.programs = ctx.programs
        self.area = area
        self.files = ctx.backlog.other_work_files

    def new_dir(self, prefix: str) -> Path:
        import tempfile

        other_work(self.area, self.files)
        return Path(tempfile.mkdtemp(prefix=prefix, dir=self.area))


def run(ctx: Context) -> FigureResult:
    n = ctx.backlog.enqueue_tasks
    result = FigureResult(
        11, "enqueue_noiso", f"Durable enqueue of {n:,} tasks without scratch isolation (tasks/s)"
    )
    work = ctx.new_dir("noiso-")
    flow, inputs = write_noop_flow(work), write_inputs(work, n)
    plain_area = work / "plain"
    plain_area.mkdir()
    plain = Plain(ctx, plain_area)
    keys = [
        f"{side} {kind}" for side in ("isolated", "plain") for kind in ("batch", "per-task", "huey")
    ]
    samples: dict[str, list[float]] = {key: [] for key in keys}
    for round_no in range(ctx.rounds):
        ctx.say(f"enqueue without isolation: round {round_no + 1}/{ctx.rounds}")
        for side, where in (("plain", plain), ("isolated", ctx)):
            samples[f"{side} per-task"].append(ours_per_task(where, flow, n)[0])
            samples[f"{side} huey"].append(huey_per_task(where, n)[0])
            samples[f"{side} batch"].append(ours_batch(where, flow, inputs, n))
    result.samples = samples
    result.params = {"tasks": n, "other work files": plain.files}
    result.values = {f"{key} median tasks/s": median(s) for key, s in samples.items()}
    rows = []
    for side, label in (("plain", "without isolation"), ("isolated", "isolated (as figure 2)")):
        huey = samples[f"{side} huey"]
        rows += [
            Row(
                f"batch enqueue (`tm enqueue --inputs`), {label}",
                "tasks/s",
                median(samples[f"{side} batch"]),
                median(huey),
                HUEY,
                Goal("ratio", ">=", 3.0) if side == "plain" else None,
                paired_ratio=paired_ratio(samples[f"{side} batch"], huey),
            ),
            Row(
                f"per-task enqueue (library `submit` per call, one process), {label}",
                "tasks/s",
                median(samples[f"{side} per-task"]),
                median(huey),
                HUEY,
                Goal("ratio", ">=", 1.0) if side == "plain" else None,
                paired_ratio=paired_ratio(samples[f"{side} per-task"], huey),
            ),
        ]
    result.rows = rows
    return result
