"""Figure 9 — draining a deep backlog with 2 workers: the rate at depth against the rate of a
shallow queue and against Huey's consumer at the same depth (both backlogs built in batches of
``build_chunk`` tasks, so their buckets of ``pending/`` hold as many tasks); a backlog enqueued as
one batch (all its tasks in one bucket); worker memory at both depths;
``/status`` and ``/metrics`` while the workers drain at depth; the idle cost of the daemon once
the spike is gone, against a fresh daemon on a fresh queue.

Both deep backlogs are built first; then each round (three for each of the bench's, as many as
the deep backlog holds: ``ROUNDS_PER_BENCH_ROUND``) drains, in turn, a fresh shallow queue of
ours and of Huey's and a stretch of each deep backlog, so that the shallow and the deep windows
of both sides sample the same minutes of the run (the host's speed drifts over minutes, and what
the disk did just before weighs on every window alike). Every other round takes the deep stretch
first (counterbalanced: a drift that lasts for minutes favours neither depth). A round's stretch
at depth is a fresh daemon (or consumer) on the deep backlog: the first ``skip`` completions
(start-up) are left out, then ``windows`` consecutive windows of ``window`` tasks each are
timed, never at the tail. A shallow queue of ``shallow`` tasks gives one window from the
``skip``-th to the ``(shallow - skip)``-th completion, so both its ends lie inside the backlog
too. Ours is the daemon (``tm daemon start --foreground``, 2 workers, no status server), its
times the ``task succeeded`` log lines; Huey's are noted inside its forked workers
(children/huey_depth_app.py). ``/status`` and ``/metrics`` are then probed on a daemon with a
status server, still at depth (its drain rate meanwhile is noted, not a goal).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from bench.backlog import (
    DeepQueue,
    LoggedDaemon,
    deep_queue,
    free_port,
    probe,
    seed_huey,
    seed_ours,
    wait_answering,
    window_rates,
    worker_rss_mb,
)
from bench.context import Context
from bench.core import BenchError, FigureResult, Goal, Row, median, paired_ratio, percentile
from bench.env import huey_env, kill_tree, ours_env, run_timed
from bench.procstat import cpu_between, usage
from bench.workload import write_inputs, write_noop_flow

HUEY = "huey_consumer -w 2 -k process (SqliteHuey), same backlog"
PROBE_PATHS = ("/status", "/metrics")
PROBE_RATE_PER_S = 50.0
SETTLE_S = 3.0
DRAIN_POLL_S = 1.0
ONE_BATCH_WAIT_S = 60.0


ROUNDS_PER_BENCH_ROUND = 3
"""This figure's rounds for each of the bench's (``--rounds``), as many as the deep backlog
holds: a round gives one shallow and one deep window of each side, one such window varies by
±15% from one minute to the next on a shared host, and the goal is a ratio within 10% — with 5
rounds, four runs over two days with no change to the drain between them put it anywhere from
0.82 to 1.11 times."""


def stretch_tasks(ctx: Context) -> int:
    """Tasks one round's stretch takes from the deep backlog."""
    sizes = ctx.backlog
    return sizes.skip + sizes.windows * sizes.window


def depth_rounds(ctx: Context) -> int:
    """Rounds of this figure: ``ROUNDS_PER_BENCH_ROUND`` for each of the bench's, fewer where
    the deep backlog cannot give them all a stretch (one more stretch is left for the probes),
    never fewer than the bench's."""
    fits = ctx.backlog.depth // stretch_tasks(ctx) - 1
    return max(ctx.rounds, min(ROUNDS_PER_BENCH_ROUND * ctx.rounds, fits))


def drain_timeout_s(tasks: int) -> float:
    return 300.0 + tasks / 500  # far slower than either side has ever drained


def ours_windows(daemon: LoggedDaemon, marks: list[int]) -> tuple[list[float], list[float]]:
    """(tasks/s of each window between ``marks``, the largest worker RSS in MB at each mark
    after the first)."""
    rss: list[float] = []
    for mark in marks:
        daemon.wait_succeeded(mark, drain_timeout_s(mark))
        if mark != marks[0]:
            rss.append(max(daemon.worker_rss_mb()))
    return window_rates(daemon.succeeded_times(marks[-1]), marks), rss


def fixed_window(ctx: Context, daemon: LoggedDaemon) -> tuple[float, float]:
    """(tasks/s over twice ``probe_window_s`` once ``skip`` tasks succeeded or ``ONE_BATCH_WAIT_S``
    passed, the largest worker RSS in MB at its end): a rate even where it collapses."""
    deadline = time.monotonic() + ONE_BATCH_WAIT_S
    while daemon.succeeded() < ctx.backlog.skip and time.monotonic() < deadline:
        time.sleep(0.05)
    first = daemon.succeeded()
    window_s = 2 * ctx.backlog.probe_window_s
    time.sleep(window_s)
    return (daemon.succeeded() - first) / window_s, max(daemon.worker_rss_mb())


def huey_windows(ctx: Context, db: Path, marks: list[int]) -> tuple[list[float], list[float]]:
    """Huey's consumer on ``db`` until the last mark: (tasks/s per window, largest worker RSS
    in MB at each mark after the first)."""
    report = db.with_suffix(f".marks-{time.monotonic_ns()}")
    env = huey_env(db, BENCH_HUEY_MARKS=",".join(map(str, marks)), BENCH_HUEY_REPORT=str(report))
    cmd = [ctx.programs.huey_consumer, "huey_depth_app.huey", "-w", "2", "-k", "process"]
    rss: list[float] = []
    seen = 0
    with open(db.with_suffix(".consumer.log"), "ab") as log:
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    deadline = time.monotonic() + drain_timeout_s(marks[-1])
    try:
        while proc.poll() is None:
            lines = report.read_text().splitlines() if report.exists() else []
            for _ in lines[seen:]:
                if seen > 0:  # at each mark after the first
                    rss.append(max(worker_rss_mb(proc.pid, None), default=0.0))
                seen += 1
            if time.monotonic() > deadline:
                raise BenchError("Huey's consumer did not reach its last mark in time")
            time.sleep(0.01)
    finally:
        if proc.poll() is None:
            kill_tree(proc)
    times = dict(line.split() for line in report.read_text().splitlines())
    if len(times) != len(marks):
        raise BenchError(f"Huey's consumer exited after {len(times)} of {len(marks)} marks")
    at = [float(times[str(mark)]) for mark in marks]
    rates = [
        (b - a) / (tb - ta) for a, b, ta, tb in zip(marks, marks[1:], at, at[1:], strict=False)
    ]
    return rates, rss


def queue_stats(env: dict[str, str]) -> tuple[int, int]:
    """(pending + delayed + in flight, entries left in ``pending/``) of the queue of ``env``."""
    from tracemind import config
    from tracemind.backend.file.stores import open_stores
    from tracemind.backend.location import data_location

    queue = open_stores(
        config.DataDirs.of(*data_location(env=env).file_dirs()), durable=False
    ).queue
    stats = queue.stats()
    return stats.pending + stats.delayed + stats.inflight, len(list(queue.pending_dir.iterdir()))


def wait_drained(daemon: LoggedDaemon, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while queue_stats(daemon.env)[0] > 0:
        if daemon.proc is not None and daemon.proc.poll() is not None:
            raise BenchError("the daemon exited while draining the backlog")
        if time.monotonic() > deadline:
            raise BenchError("the daemon did not drain the backlog in time")
        time.sleep(DRAIN_POLL_S)


def idle_cpu(
    ctx: Context, spiked: LoggedDaemon, fresh: LoggedDaemon
) -> tuple[list[float], list[float]]:
    """CPU % of one core of each daemon (every process of it) over the same idle windows."""
    time.sleep(SETTLE_S)
    spiked_pct: list[float] = []
    fresh_pct: list[float] = []
    window_s = ctx.backlog.idle_window_s
    for number in range(ctx.backlog.idle_windows):
        ctx.say(f"depth: idle window {number + 1}/{ctx.backlog.idle_windows} ({window_s:g} s)")
        before = usage(spiked.pid), usage(fresh.pid)
        time.sleep(window_s)
        after = usage(spiked.pid), usage(fresh.pid)
        spiked_pct.append(100 * cpu_between(before[0], after[0]) / window_s)
        fresh_pct.append(100 * cpu_between(before[1], after[1]) / window_s)
    return spiked_pct, fresh_pct


def run(ctx: Context) -> FigureResult:
    sizes = ctx.backlog
    depth, shallow = sizes.depth, sizes.shallow
    result = FigureResult(
        9, "depth", f"Drain with 2 workers at {depth:,} vs {shallow:,} pending (tasks/s)"
    )
    rounds = depth_rounds(ctx)
    if shallow <= 2 * sizes.skip or depth < (rounds + 1) * stretch_tasks(ctx):
        raise BenchError("depth: the backlogs are too small for their windows")
    samples: dict[str, list[float]] = {}

    def add(key: str, values: list[float]) -> None:
        samples.setdefault(key, []).extend(values)

    # Both backlogs first, then rounds in which each side drains a fresh shallow queue and a
    # window at depth, so that every kind of window samples the same stretch of the run (the
    # host's speed drifts over minutes; what the disk did just before weighs on all of them).
    deep: DeepQueue = deep_queue(ctx)  # (perhaps built and inspected by figure 8 before)
    deep.drained = True  # whatever happens next, no later figure may take it as built
    huey_db = ctx.new_dir("huey-deep-") / "huey.db"
    ctx.say(f"depth: seeding Huey with {depth:,} tasks")
    huey_seed_s = seed_huey(ctx, huey_db, depth)
    start_depth = queue_stats(ours_env(deep.data))[0]
    work = ctx.new_dir("depth-")
    flow = write_noop_flow(work)
    shallow_marks = [sizes.skip, shallow - sizes.skip]
    deep_marks = [sizes.skip + i * sizes.window for i in range(sizes.windows + 1)]

    def shallow_round() -> None:
        data = ctx.new_dir("shallow-") / "data"
        seed_ours(ctx, data, flow, shallow)
        with LoggedDaemon(ctx, data) as daemon:
            rates, rss = ours_windows(daemon, shallow_marks)
        add("ours shallow tasks/s", rates)
        add("ours shallow worker rss MB", rss)
        db = ctx.new_dir("huey-shallow-") / "huey.db"
        seed_huey(ctx, db, shallow)
        rates, rss = huey_windows(ctx, db, shallow_marks)
        add("huey shallow tasks/s", rates)
        add("huey shallow worker rss MB", rss)

    def deep_round() -> None:
        with LoggedDaemon(ctx, deep.data) as daemon:  # (as the shallow ones: no status server)
            rates, rss = ours_windows(daemon, deep_marks)
        add("ours deep tasks/s", rates)
        add("ours deep worker rss MB", rss)
        rates, rss = huey_windows(ctx, huey_db, deep_marks)
        add("huey deep tasks/s", rates)
        add("huey deep worker rss MB", rss)

    for round_no in range(rounds):
        # Every other round takes the deep stretch first: a host whose speed drifts the same
        # way for minutes then favours neither depth in the rounds' ratios.
        steps = [(shallow, shallow_round), (depth, deep_round)][:: 1 if round_no % 2 == 0 else -1]
        order = " then ".join(f"{pending:,}" for pending, _ in steps)
        ctx.say(f"depth: round {round_no + 1}/{rounds}, {order} pending")
        for _, step in steps:
            step()

    # A backlog enqueued as one batch: every task in one bucket of pending/.
    data = ctx.new_dir("one-batch-") / "data"
    inputs = write_inputs(data.parent, sizes.one_batch)
    ctx.say(f"depth: one batch of {sizes.one_batch:,} tasks (`tm enqueue --inputs`)")
    run_timed(
        [ctx.programs.tm, "enqueue", str(flow), "--inputs", str(inputs)],
        env=ours_env(data),
        timeout_s=drain_timeout_s(sizes.one_batch),
    )
    with LoggedDaemon(ctx, data) as daemon:
        rate, rss_mb = fixed_window(ctx, daemon)
    add("ours one batch tasks/s", [rate])
    add("ours one batch worker rss MB", [rss_mb])

    port = free_port()
    with LoggedDaemon(ctx, deep.data, status_port=port) as daemon:
        wait_answering(port, 30.0)
        ctx.say(f"depth: /status and /metrics while draining ({sizes.probe_window_s:g} s)")
        succeeded_before = daemon.succeeded()
        latency = probe(port, PROBE_PATHS, sizes.probe_window_s, PROBE_RATE_PER_S)
        probed_rate = (daemon.succeeded() - succeeded_before) / sizes.probe_window_s
        left_after_probe = queue_stats(daemon.env)[0]
    add("ours deep tasks/s while probed", [probed_rate])

    # The rest of the spike drained by the daemon, then its idle cost beside a fresh one's.
    ctx.say(f"depth: draining the remaining {left_after_probe:,} tasks")
    with LoggedDaemon(ctx, deep.data) as spiked:
        drain_started = time.monotonic()
        wait_drained(spiked, drain_timeout_s(left_after_probe))
        drain_s = time.monotonic() - drain_started
        fresh_data = ctx.new_dir("fresh-") / "data"
        seed_ours(ctx, fresh_data, flow, 1)  # a queue that has held one task
        with LoggedDaemon(ctx, fresh_data) as fresh:
            fresh.wait_succeeded(1, 60.0)
            spiked_pct, fresh_pct = idle_cpu(ctx, spiked, fresh)
            spiked_entries = queue_stats(spiked.env)[1]
            fresh_entries = queue_stats(fresh.env)[1]
    add("ours idle cpu % after spike", spiked_pct)
    add("ours idle cpu % fresh", fresh_pct)
    pending_bytes = (deep.data / "queue" / "pending").stat().st_size
    fresh_bytes = (fresh_data / "queue" / "pending").stat().st_size

    result.samples = samples
    for path in PROBE_PATHS:
        result.samples[f"draining at depth {path} ms"] = latency[path]
    result.params = {
        "rounds": rounds,
        "depth": depth,
        "shallow": shallow,
        "skip": sizes.skip,
        "window": sizes.window,
        "windows": sizes.windows,
        "deep marks": deep_marks,
        "shallow marks": shallow_marks,
        "build chunk": sizes.build_chunk,
        "one batch": sizes.one_batch,
        "deep build s": deep.build_s,
        "deep pending at start": start_depth,
        "huey deep seed s": huey_seed_s,
        "left after probes": left_after_probe,
        "rest drained in s": round(drain_s, 1),
        "pending/ entries after the spike": spiked_entries,
        "pending/ entries fresh": fresh_entries,
        "pending/ size after the spike B": pending_bytes,
        "pending/ size fresh B": fresh_bytes,
        "probe failures": len(latency["failures"]),
    }
    values = {f"{key} median": median(s) for key, s in samples.items()}
    for path in PROBE_PATHS:
        values[f"draining at depth {path} p50 ms"] = median(latency[path])
        values[f"draining at depth {path} p99 ms"] = percentile(latency[path], 99)
    result.values = values

    ours_deep, ours_shallow = samples["ours deep tasks/s"], samples["ours shallow tasks/s"]
    huey_deep = samples["huey deep tasks/s"]
    rss_delta = median(samples["ours deep worker rss MB"]) - median(
        samples["ours shallow worker rss MB"]
    )
    result.values["ours worker rss deep - shallow MB"] = rss_delta
    result.rows = [
        Row(
            f"drain at {depth:,} pending ÷ at {shallow:,} (daemon, 2 workers)",
            "tasks/s",
            median(ours_deep),
            median(ours_shallow),
            f"ours at {shallow:,}",
            Goal("ratio", ">=", 0.9),
            paired_ratio=paired_ratio(ours_deep, ours_shallow) if sizes.windows == 1 else None,
        ),
        Row(
            f"drain at {depth:,} pending, ours ÷ Huey",
            "tasks/s",
            median(ours_deep),
            median(huey_deep),
            HUEY,
            Goal("ratio", ">=", 2.0),
            paired_ratio=paired_ratio(ours_deep, huey_deep),
        ),
        Row(
            f"drain at {shallow:,} pending, ours ÷ Huey",
            "tasks/s",
            median(ours_shallow),
            median(samples["huey shallow tasks/s"]),
            HUEY,
            paired_ratio=paired_ratio(ours_shallow, samples["huey shallow tasks/s"]),
        ),
        Row(
            f"Huey: drain at {depth:,} ÷ at {shallow:,}",
            "tasks/s",
            median(huey_deep),
            median(samples["huey shallow tasks/s"]),
            f"Huey at {shallow:,}",
        ),
        Row(
            f"worker RSS at {depth:,} minus at {shallow:,} pending (largest worker)",
            "MB",
            rss_delta,
            goal=Goal("ours", "<=", 10.0, " MB"),
            note=f"{median(samples['ours deep worker rss MB']):.1f} MB vs "
            f"{median(samples['ours shallow worker rss MB']):.1f} MB",
        ),
        Row(
            f"worker RSS at {depth:,} pending, ours ÷ Huey's worker",
            "MB",
            median(samples["ours deep worker rss MB"]),
            median(samples["huey deep worker rss MB"]),
            "Huey's worker, same backlog",
        ),
    ]
    one_batch = samples["ours one batch tasks/s"]
    result.rows.append(
        Row(
            f"drain at {sizes.one_batch:,} pending enqueued as one batch ÷ at {shallow:,} "
            f"({2 * sizes.probe_window_s:g} s)",
            "tasks/s",
            median(one_batch),
            median(ours_shallow),
            f"ours at {shallow:,}",
            note=f"worker RSS {median(samples['ours one batch worker rss MB']):.1f} MB",
        )
    )
    result.rows.append(
        Row(
            f"drain at depth with a status server answering {PROBE_RATE_PER_S:g} req/s ÷ at "
            f"{shallow:,} ({sizes.probe_window_s:g} s)",
            "tasks/s",
            median(samples["ours deep tasks/s while probed"]),
            median(ours_shallow),
            f"ours at {shallow:,}",
        )
    )
    result.values["ours rest of the spike drained tasks/s"] = left_after_probe / drain_s
    for path in PROBE_PATHS:
        result.rows.append(
            Row(
                f"`GET {path}` p99, 2 workers draining at depth ({PROBE_RATE_PER_S:g} req/s)",
                "ms",
                values[f"draining at depth {path} p99 ms"],
                goal=Goal("ours", "<", 20.0, " ms"),
            )
        )
    result.rows.append(
        Row(
            f"idle CPU of the daemon after the {depth:,} spike drained ÷ fresh daemon",
            "%",
            median(spiked_pct),
            median(fresh_pct),
            "fresh daemon, fresh queue",
            Goal("ratio", "<=", 1.2),
            note="goal ±20%; the same windows for both",
            paired_ratio=paired_ratio(spiked_pct, fresh_pct) if min(fresh_pct) > 0 else None,
        )
    )
    return result
