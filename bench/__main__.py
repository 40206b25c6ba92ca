"""``python -m bench``: run every figure, ours and Huey interleaved, print the table, save JSON.

Exit status: 0 when every figure ran (goals missed or not), 1 when a figure failed to run,
75 when Huey cannot be installed (the smoke test skips on it outside CI).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from bench import (
    fig_cold_start,
    fig_depth,
    fig_disk,
    fig_dlq,
    fig_drain,
    fig_enqueue,
    fig_idle,
    fig_inspect,
    fig_keys,
    fig_noiso,
    fig_pickup,
    fig_redis,
    fig_retention,
    fig_serving,
    fig_status,
)
from bench.context import BacklogSizes, Context, Sizes
from bench.core import FigureResult
from bench.env import (
    BENCH_DIR,
    DEFAULT_SCRATCH,
    EXIT_NO_COMPETITOR,
    CompetitorUnavailable,
    programs,
    spread_subdirectories,
    version_of,
)
from bench.report import machine, source_revision, table, write_json

FIGURES: dict[str, tuple[int, str, Callable[[Context], FigureResult]]] = {
    "cold_start": (1, "CLI cold start", fig_cold_start.run),
    "enqueue": (2, "Durable enqueue", fig_enqueue.run),
    "disk": (3, "Raw disk limits", fig_disk.run),
    "drain": (4, "End-to-end drain", fig_drain.run),
    "pickup": (5, "Pick-up latency", fig_pickup.run),
    "idle": (6, "Idle cost", fig_idle.run),
    "status": (7, "Status endpoint latency", fig_status.run),
    # The backlog figures: run with --backlog or --only (a million tasks take minutes and GBs).
    "inspect": (8, "Inspecting a deep backlog", fig_inspect.run),
    "depth": (9, "Drain at depth", fig_depth.run),
    "keys": (10, "Batch with idempotency keys", fig_keys.run),
    "enqueue_noiso": (11, "Durable enqueue without scratch isolation", fig_noiso.run),
    "dlq": (12, "Counts with many dead letters", fig_dlq.run),
    "serving": (13, "Probes and queue stats while draining a deep backlog", fig_serving.run),
    "retention": (14, "Disk per task before and after a retention pass", fig_retention.run),
    "redis": (15, "Redis backend vs RQ", fig_redis.run),
}
BACKLOG_FIGURES = ("inspect", "depth", "keys", "enqueue_noiso", "dlq", "serving", "retention")
REDIS_FIGURES = ("redis",)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Run every benchmark figure, ours and Huey's runs interleaved; print the "
        "table and save the JSON results. See docs/benchmarks.md.",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes (the smoke test)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        metavar="N",
        help="A/B rounds per figure (default 5; --quick: 1)",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted(FIGURES),
        metavar="NAME",
        help=f"run only this figure (repeatable): {', '.join(FIGURES)}",
    )
    parser.add_argument(
        "--backlog",
        action="store_true",
        help=f"also run the backlog figures ({', '.join(BACKLOG_FIGURES)}): minutes and, at the "
        "default depth, several GB of scratch space",
    )
    parser.add_argument(
        "--redis",
        action="store_true",
        help="also run the Redis figure against RQ (needs redis-server; makes bench/.venv-rq)",
    )
    parser.add_argument(
        "--depth",
        type=int,
        default=None,
        metavar="N",
        help="tasks in the deep backlog of the backlog figures (default 1,000,000; --quick: "
        f"{BacklogSizes.quick().depth:,})",
    )
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=BENCH_DIR / "results",
        help="where the JSON results go (default bench/results)",
    )
    parser.add_argument(
        "--scratch-dir",
        type=Path,
        default=DEFAULT_SCRATCH,
        help="where data directories are made: the disk under test (default bench/.scratch)",
    )
    parser.add_argument(
        "--refresh-huey", action="store_true", help="recreate bench/.venv-huey with the latest Huey"
    )
    args = parser.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.depth is not None and args.depth < 1:
        parser.error("--depth must be at least 1")
    return args


def run_figure(name: str, ctx: Context) -> FigureResult:
    number, title, run = FIGURES[name]
    ctx.say(f"figure {number}: {title}")
    started = time.monotonic()
    try:
        result = run(ctx)
    except Exception as exc:  # one failed figure must not lose the others' results
        traceback.print_exc()
        result = FigureResult(
            number, name, title, status="error", note=f"{type(exc).__name__}: {exc}"
        )
    result.params["seconds"] = round(time.monotonic() - started, 1)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    rounds = args.rounds or (1 if args.quick else 5)
    sizes = Sizes.quick(rounds) if args.quick else Sizes.full(rounds)
    backlog = BacklogSizes.quick(args.depth) if args.quick else BacklogSizes.full(args.depth)
    try:
        progs = programs(refresh_huey=args.refresh_huey)
    except CompetitorUnavailable as exc:
        print(f"bench: cannot install the competitor: {exc}", file=sys.stderr)
        return EXIT_NO_COMPETITOR
    args.scratch_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="run-", dir=args.scratch_dir.resolve()))
    spread = spread_subdirectories(scratch)
    ctx = Context(progs, sizes, rounds, scratch, backlog)
    started_at = datetime.now(UTC)
    if args.only:
        names = [name for name in FIGURES if name in args.only]
    else:
        names = [
            name
            for name in FIGURES
            if (args.backlog or name not in BACKLOG_FIGURES)
            and (args.redis or name not in REDIS_FIGURES)
        ]
    try:
        figures = [run_figure(name, ctx) for name in names]
        host = machine(scratch)
    finally:
        ctx.say("removing this run's scratch data (slow where every unlink discards blocks)")
        shutil.rmtree(scratch, ignore_errors=True)
    print(table(figures))
    data = {
        "started_at": started_at.isoformat(),
        "finished_at": datetime.now(UTC).isoformat(),
        "command": "python -m bench " + " ".join(sys.argv[1:] if argv is None else argv),
        "quick": args.quick,
        "rounds": rounds,
        "machine": {**host, "scratch_spread_over_block_groups": spread},
        "versions": {
            "tracemind-daemon": version_of(progs.python, "tracemind-daemon"),
            "huey": version_of(progs.huey_python, "huey"),
        },
        "source": source_revision(BENCH_DIR.parent),
        "env": {"TM_FILE_QUEUE_V2": "1"},
        "backlog_sizes": asdict(backlog),
        "figures": {fig.name: fig.to_dict() for fig in figures},
    }
    path = args.results_dir / f"{started_at.strftime('%Y%m%dT%H%M%SZ')}.json"
    write_json(path, data)
    print(f"\nresults: {path}")
    return 1 if any(fig.status == "error" for fig in figures) else 0


if __name__ == "__main__":
    raise SystemExit(main())
