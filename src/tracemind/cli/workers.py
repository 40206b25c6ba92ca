"""``tm workers start``: a foreground worker pool (no daemon state, logs to stdout)."""

from __future__ import annotations

import argparse

from tracemind.cli.common import add_app_dir_option, add_queue_options, location_from

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import NoReturn

    from tracemind.backend.protocol import Registry
    from tracemind.worker.pool import WorkerPool
    from tracemind.worker.settings import PoolSettings

DEFAULT_LEASE_S = 30.0
DEFAULT_DRAIN_TIMEOUT_S = 8.0


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def worker_count(text: str) -> int:
    """``-n``/``--workers``: a whole number from 1 to :data:`~tracemind.config.MAX_WORKERS`."""
    from tracemind.config import MAX_WORKERS

    value = positive_int(text)
    if value > MAX_WORKERS:
        raise argparse.ArgumentTypeError(
            f"at most {MAX_WORKERS} workers per pool, got {value} (run several pools instead)"
        )
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
    return value


DEFAULT_RUNTIME = "tracemind.worker.runtime:FlowRuntime"
"""Runs the flow snapshot each task carries (see tracemind.worker.runtime)."""


def add_pool_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--runtime",
        default=DEFAULT_RUNTIME,
        metavar="MODULE:FACTORY",
        help="factory of the object that executes tasks (default: run the task's flow)",
    )
    parser.add_argument(
        "--lease-s",
        type=positive_float,
        default=DEFAULT_LEASE_S,
        metavar="S",
        help=f"lease length, renewed every third of it while a task runs (default {DEFAULT_LEASE_S:g})",
    )
    parser.add_argument(
        "--drain-timeout",
        type=positive_float,
        default=DEFAULT_DRAIN_TIMEOUT_S,
        metavar="S",
        help="on stop, how long running tasks may finish before their workers are killed "
        f"(default {DEFAULT_DRAIN_TIMEOUT_S:g})",
    )
    add_app_dir_option(parser, where="where the workers import hooks from")
    add_queue_options(parser)


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    workers = commands.add_parser("workers")
    verbs = workers.add_subparsers(dest="verb", metavar="VERB", required=True)
    start = verbs.add_parser(
        "start",
        help="start N worker processes in the foreground",
        description="Run N worker processes until SIGINT/SIGTERM (graceful drain; a second "
        "signal stops fast). --burst exits 0 once nothing is pending or delayed.",
    )
    start.add_argument(
        "-n",
        "--workers",
        type=worker_count,
        default=1,
        metavar="N",
        help="worker processes, 1 to 256 (default 1)",
    )
    start.add_argument("--burst", action="store_true", help="exit 0 when the queue is empty")
    add_pool_options(start)
    start.set_defaults(handler=start_command)


def pool_settings(
    args: argparse.Namespace,
    *,
    instance_id: str,
    log_file: str | None,
    fork: bool = False,
    report_idle: bool = False,
) -> PoolSettings:
    """The settings of the pool the options of :func:`add_pool_options` (and ``--workers``)
    describe, on the location the arguments name."""
    from tracemind import config
    from tracemind.worker.settings import PoolSettings, WorkerSettings

    worker = WorkerSettings(
        location=location_from(args),
        durable=config.durable(),
        runtime=args.runtime,
        lease_s=args.lease_s,
        log_file=log_file,
        report_idle=report_idle,
        nice=config.worker_nice(),
    )
    return PoolSettings(size=args.workers, instance_id=instance_id, worker=worker, fork=fork)


def start_command(args: argparse.Namespace) -> int:
    import contextlib
    import os

    from tracemind import log
    from tracemind.backend import open_backend
    from tracemind.errors import QueueUnavailable
    from tracemind.worker.pool import WorkerPool
    from tracemind.worker.runtime import load_factory
    from tracemind.worker.supervisor import Supervisor

    load_factory(args.runtime)
    settings = pool_settings(
        args,
        instance_id=os.urandom(6).hex(),
        log_file=None,  # (the pool's standard output)
        fork=True,  # a foreground pool runs one thread: its workers start without imports
        report_idle=args.burst,
    )
    backend = open_backend(settings.worker.location, durable=settings.worker.durable)
    backend.prepare()  # one line and exit 1 when unwritable, before any worker could crash on it
    log.configure()
    pool = WorkerPool(settings, backend.queue)
    supervisor = Supervisor(
        pool,
        backend.queue,
        drain_timeout_s=args.drain_timeout,
        burst=args.burst,
        upkeep=backend.maintain,
        on_tick=registrar(backend.registry, pool, settings.instance_id, burst=args.burst),
    )
    supervisor.install_signal_handlers()
    try:
        supervisor.run()
    finally:
        with contextlib.suppress(QueueUnavailable):  # (the entry then goes stale by itself)
            backend.registry.deregister(settings.instance_id)
    if supervisor.crash_looped:
        from tracemind.errors import TraceMindError

        raise TraceMindError("--burst: the workers kept dying at start (see the log above)")
    exit_now(0)


def registrar(
    registry: Registry, pool: WorkerPool, instance_id: str, *, burst: bool = False
) -> Callable[[], None]:
    """A supervisor tick that keeps this pool registered as serving the queue (once a second).
    While the queue cannot be reached the registration waits for a later tick (``burst``: the
    error ends the run, as the supervisor's own upkeep does)."""
    import time

    from tracemind.backend.registration import registration
    from tracemind.errors import QueueUnavailable

    started_s = time.time()
    next_s = 0.0

    def tick() -> None:
        nonlocal next_s
        if time.monotonic() < next_s:
            return
        next_s = time.monotonic() + 1.0
        try:
            write_entry()
        except QueueUnavailable:
            if burst:
                raise

    def write_entry() -> None:
        status = pool.status()
        workers = {
            "configured": pool.settings.size,
            "alive": int(status.get("alive") or 0),
            "busy": pool.held_leases(),
        }
        entry = registration(
            instance_id,
            kind="pool",
            state_dir=None,
            started_s=started_s,
            workers=workers,
            draining=False,
        )
        entry["running"] = pool.running()  # for the dashboard
        registry.register(entry)

    return tick


def exit_now(code: int) -> NoReturn:
    """End the process without the interpreter's teardown, which only frees memory here
    (~20 ms of a burst run): the workers are gone, their acks committed and their leases
    returned, this process holds nothing to flush but its standard streams."""
    import os
    import sys

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken stream: nothing more to write
            code = code or 1
    os._exit(code)
