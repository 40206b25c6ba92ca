"""A worker process: one consumer loop, started and watched by the pool (``tm workers start`` or
the daemon). Either run as ``python -m tracemind.worker.process`` with its
:class:`~tracemind.worker.settings.WorkerSpec` in ``TM_WORKER_SPEC`` (JSON), an optional events
pipe (``TM_WORKER_EVENTS_FD``) and wake pipe (``TM_WORKER_WAKE_FD``), or forked by the pool, which calls :func:`main` with a
:class:`ForkedStart` in the child (see :mod:`tracemind.worker.pool`).

Events (a task taken, each step begun, its outcome, and in a burst pool ``idle``) go to the pool
as JSON lines on the events pipe; :mod:`tracemind.worker.events` describes them.

The worker dies with its parent (PR_SET_PDEATHSIG), so a killed daemon never leaves workers
behind; the new daemon returns their leases. SIGTERM: finish the task in progress, then exit.
SIGINT is ignored (the supervisor coordinates a Ctrl-C of the whole process group).
"""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from tracemind.libc import die_with_parent
from tracemind.worker.events import EventWriter
from tracemind.worker.settings import WorkerSpec

EXIT_RUNTIME_FAILED = 3


def _die_with_parent(parent_pid: int) -> None:
    die_with_parent()  # not Linux: the pool's stop() still terminates its workers
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(0)


@dataclass(frozen=True)
class ForkedStart:
    """What a worker forked by the pool is given instead of its environment. Its signals
    (``blocked``) stay blocked until the worker's own handlers are in place: until then the
    handlers it inherited are the pool's."""

    spec: WorkerSpec
    events_fd: int | None
    wake_fd: int | None
    blocked: frozenset[signal.Signals]


def preload() -> None:
    """Import what a worker loads before its first task (its consumer, the default runtime's
    flow modules, ctypes for prctl): the pool calls this once before it forks workers, so
    each starts with them instead of importing them again."""
    from tracemind.flows import FlowSnapshot, RetryPolicy, run_flow
    from tracemind.libc import libc
    from tracemind.worker.consumer import Consumer

    del Consumer, FlowSnapshot, RetryPolicy, run_flow  # loaded: that is all this is for
    libc()


def _optional_fd(fd_text: str | None) -> int | None:
    return int(fd_text) if fd_text else None


def main(forked: ForkedStart | None = None) -> int:
    spec = forked.spec if forked else WorkerSpec.from_json(os.environ["TM_WORKER_SPEC"])
    settings = spec.settings
    _die_with_parent(spec.parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.umask(0o007)  # fsutil.PROCESS_UMASK: group rw, nothing for others, whatever the pool's
    if settings.nice:
        os.nice(settings.nice)  # steps yield the CPU to the supervisor and the probes

    from tracemind import log
    from tracemind.backend import open_backend
    from tracemind.errors import TraceMindError
    from tracemind.worker.consumer import Consumer
    from tracemind.worker.runtime import make_runtime

    sink = log.LogFile(Path(settings.log_file)) if settings.log_file else sys.stdout
    log.configure(sink)
    logger = log.get_logger("tracemind.worker").bind(consumer=spec.consumer_id, pid=os.getpid())
    if forked is None:
        events_fd = _optional_fd(os.environ.get("TM_WORKER_EVENTS_FD"))
        wake_fd = _optional_fd(os.environ.get("TM_WORKER_WAKE_FD"))
    else:
        events_fd, wake_fd = forked.events_fd, forked.wake_fd
    events = EventWriter(events_fd, wake_fd) if events_fd is not None else None

    def hup(signum: int, frame: FrameType | None) -> None:
        if isinstance(sink, log.LogFile):
            sink.reopen()

    signal.signal(signal.SIGHUP, hup)
    try:
        runtime = make_runtime(settings.runtime)
    except Exception as exc:  # whatever the user's factory raises, report it and exit
        message = str(exc) if isinstance(exc, TraceMindError) else f"{type(exc).__name__}: {exc}"
        logger.error("runtime failed to start", runtime=settings.runtime, error=message)
        return EXIT_RUNTIME_FAILED

    queue = open_backend(settings.location, durable=settings.durable).queue
    queue.take_share(*spec.share)  # (the pool's workers rarely race for one task)

    consumer = Consumer(
        queue,
        runtime,
        spec.consumer_id,
        lease_s=settings.lease_s,
        on_finished=events.finished if events else None,
        on_started=events.started if events else None,
        on_idle=events.idle if events and settings.report_idle else None,
        on_step=events.step if events else None,
        wake_on_arrival=not settings.report_idle,  # (a burst pool stops its idle workers)
    )

    def term(signum: int, frame: FrameType | None) -> None:
        consumer.stop_from_signal()

    signal.signal(signal.SIGTERM, term)
    if forked is not None:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, forked.blocked)
    logger.info("worker started", runtime=settings.runtime, share=list(spec.share))
    consumer.run()
    logger.info("worker stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
