"""A worker process: one consumer loop, started and watched by the pool (``tm workers start`` or
the daemon). Either run as ``python -m tracemind.worker.process`` with its
:class:`~tracemind.worker.settings.WorkerSpec` in ``TM_WORKER_SPEC`` (JSON), an optional events pipe (``TM_WORKER_EVENTS_FD``) and wake pipe
(``TM_WORKER_WAKE_FD``), or forked by the pool, which calls :func:`main` with a
:class:`ForkedStart` in the child (see :mod:`tracemind.worker.pool`).

Events are JSON lines on the events pipe: ``started`` when a task is taken (its id, flow id and
attempt), ``step`` as each step of its flow begins, its outcome when it is settled (with the
first line of a failure's error), and, when the spec asks for it (a burst pool), ``idle`` when a
look found nothing to do after a task (its acks committed first); an ``idle`` line is followed
by one byte on the wake pipe, so that the pool's supervisor wakes for it at once. Events never
carry a task's input or result.

The worker dies with its parent (PR_SET_PDEATHSIG), so a killed daemon never leaves workers
behind; the new daemon returns their leases. SIGTERM: finish the task in progress, then exit.
SIGINT is ignored (the supervisor coordinates a Ctrl-C of the whole process group).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from tracemind.libc import die_with_parent
from tracemind.worker.activity import error_line, short_id
from tracemind.worker.runtime import Runtime, Task
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


def _event_writer(fd_text: str | None) -> Any:
    if not fd_text:
        return None
    return os.fdopen(int(fd_text), "w", buffering=1)


class FlowTracking:
    """A runtime that remembers the task and flow ids of the task it ran last (for the pool's
    per-flow counts and recent failures, reported with the outcome after the task)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.flow_id: str | None = None
        self.task_id: str | None = None

    def execute(self, task: Task) -> dict[str, Any]:
        self.flow_id = task.flow_id
        self.task_id = task.task_id
        return self.runtime.execute(task)


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
        events = _event_writer(os.environ.get("TM_WORKER_EVENTS_FD"))
        wake_fd = _optional_fd(os.environ.get("TM_WORKER_WAKE_FD"))
    else:
        events = _event_writer(str(forked.events_fd) if forked.events_fd is not None else None)
        wake_fd = forked.wake_fd

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

    def started(task: Task) -> None:
        if events is not None:
            event = {
                "event": "started",
                "attempt": task.attempt,
                "task_id": task.task_id,
                "flow_id": short_id(task.flow_id),
            }
            events.write(json.dumps(event) + "\n")

    def step(step_id: str) -> None:
        if events is not None:
            events.write(json.dumps({"event": "step", "step": short_id(step_id)}) + "\n")

    tracked = FlowTracking(runtime)

    def finished(outcome: str, duration_s: float, attempt: int, error: str | None) -> None:
        if events is not None:
            event = {
                "outcome": outcome,
                "duration_s": duration_s,
                "attempt": attempt,
                "flow_id": tracked.flow_id,
                "task_id": tracked.task_id,
                "error": error_line(error),
            }
            events.write(json.dumps(event) + "\n")

    def idle() -> None:
        if events is not None:
            events.write('{"event": "idle"}\n')
        if wake_fd is not None:
            with contextlib.suppress(OSError):  # full (a wake-up is pending anyway) or closed
                os.write(wake_fd, b"i")

    consumer = Consumer(
        queue,
        tracked,
        spec.consumer_id,
        lease_s=settings.lease_s,
        on_finished=finished,
        on_started=started,
        on_idle=idle if settings.report_idle else None,
        on_step=step,
    )

    def term(signum: int, frame: FrameType | None) -> None:
        consumer.stop_from_signal()

    signal.signal(signal.SIGTERM, term)
    if forked is not None:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, forked.blocked)
    logger.info("worker started", runtime=settings.runtime)
    consumer.run()
    logger.info("worker stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
