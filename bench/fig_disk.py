"""Figure 3 — the disk's own limits, measured in the same run, and our durable rates as a
fraction of the limit that matches their design.

Limit 1: append 200 bytes to one file + fsync (what a journal or SQLite's WAL pays per commit).
Limit 2: create a file in ``tmp/`` + write 200 bytes + fsync + rename into another directory +
fsync that directory — exactly what our durable per-task enqueue does. A durable ack appends a
line and renames, and shares one flush with the acks gathered with it, so it is set against
limit 1 (one flush per operation): a ratio above 1 means the group commit pays off.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from bench.context import Context
from bench.core import FigureResult, Row, median, paired_ratio
from bench.fig_enqueue import huey_per_task, ours_claim_ack, ours_per_task
from bench.workload import write_noop_flow

RECORD = b"x" * 199 + b"\n"


def append_fsync_rate(directory: Path, ops: int) -> float:
    fd = os.open(directory / "journal", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        started = time.perf_counter()
        for _ in range(ops):
            os.write(fd, RECORD)
            os.fsync(fd)
        elapsed_s = time.perf_counter() - started
    finally:
        os.close(fd)
    return ops / elapsed_s


def create_rename_rate(directory: Path, ops: int) -> float:
    tmp_dir, target_dir = directory / "tmp", directory / "pending"
    tmp_dir.mkdir()
    target_dir.mkdir()
    started = time.perf_counter()
    for i in range(ops):
        tmp = tmp_dir / f"{i}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, RECORD)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, target_dir / f"{i}.json")
        dir_fd = os.open(target_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return ops / (time.perf_counter() - started)


def run(ctx: Context) -> FigureResult:
    ops, n = ctx.sizes.disk_ops, ctx.sizes.enqueue_tasks
    result = FigureResult(3, "disk", "Raw disk limits and our fraction of them (ops/s)")
    keys = ("append+fsync", "create+rename+dirfsync", "ours per-task", "ours claim+ack", "huey")
    samples: dict[str, list[float]] = {key: [] for key in keys}
    work = ctx.new_dir("disk-")
    flow = write_noop_flow(work)
    for round_no in range(ctx.rounds):
        ctx.say(f"disk: round {round_no + 1}/{ctx.rounds}")
        samples["append+fsync"].append(append_fsync_rate(ctx.new_dir("limit1-"), ops))
        samples["create+rename+dirfsync"].append(create_rename_rate(ctx.new_dir("limit2-"), ops))
        samples["ours per-task"].append(ours_per_task(ctx, flow, n)[1])
        samples["huey"].append(huey_per_task(ctx, n)[1])
        # Last in the round: it deletes files (its directory has its own block group).
        samples["ours claim+ack"].append(ours_claim_ack(ctx, flow, ctx.sizes.claim_ack_tasks))
    limit1, limit2 = median(samples["append+fsync"]), median(samples["create+rename+dirfsync"])
    huey = median(samples["huey"])
    result.samples = samples
    result.params = {"disk_ops": ops, "tasks": n}
    result.values = {
        "limit 1 append+fsync ops/s": limit1,
        "limit 2 create+write+fsync+rename+dirfsync ops/s": limit2,
        "ours per-task enqueue in loop tasks/s": median(samples["ours per-task"]),
        "ours claim+ack in loop tasks/s": median(samples["ours claim+ack"]),
        "huey per-task enqueue in loop tasks/s": huey,
        "huey per-task enqueue / limit 1": paired_ratio(samples["huey"], samples["append+fsync"]),
    }
    limit2_label = "limit 2 (create+write+fsync+rename+dir fsync)"
    result.rows = [
        Row("disk limit 1: 200 B append + fsync", "ops/s", None, limit1, "measured"),
        Row(
            "disk limit 2: create + write + fsync + rename + dir fsync",
            "ops/s",
            None,
            limit2,
            "measured",
        ),
        Row(
            "per-task durable enqueue (in loop) ÷ limit 2",
            "tasks/s",
            median(samples["ours per-task"]),
            limit2,
            limit2_label,
            paired_ratio=paired_ratio(samples["ours per-task"], samples["create+rename+dirfsync"]),
        ),
        Row(
            "claim + durable ack (in loop) ÷ limit 1",
            "tasks/s",
            median(samples["ours claim+ack"]),
            limit1,
            "limit 1 (append + fsync)",
            paired_ratio=paired_ratio(samples["ours claim+ack"], samples["append+fsync"]),
        ),
    ]
    return result
