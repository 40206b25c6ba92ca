"""The worker pool: N worker processes, respawned with backoff, their leases returned on death.

The pool never kills a worker because its task is long (leases are renewed while tasks run).
A worker that dies is reaped by :meth:`WorkerPool.poll`, its leases are returned to the queue at
once, and it is respawned after a backoff that grows while it keeps dying young; a slot that died
young :data:`CRASH_LOOP_AFTER` times in a row is reported as crash-looping.

Workers are spawned (``python -m tracemind.worker.process``), or, with
:attr:`~tracemind.worker.settings.PoolSettings.fork`
and while this process runs a single thread, forked from it: a forked worker starts with every
module the pool imported, in about a millisecond instead of a fresh interpreter's ~0.1 s. A
forked child keeps only its standard streams and its two pipes (every other descriptor is
closed, so no lock or sibling's pipe leaks into it) and never returns into the pool's code.

:meth:`WorkerPool.wait` blocks until a worker exits (a pidfd per worker, Linux 5.3+), a worker
reports idle (one shared wake pipe), a caller's descriptor is readable, or the timeout.
"""

from __future__ import annotations

import bisect
import contextlib
import fcntl
import gc
import itertools
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tracemind.config import MAX_WORKERS
from tracemind.errors import QueueUnavailable, UsageError
from tracemind.log import get_logger
from tracemind.queue.protocol import TaskQueue
from tracemind.worker.activity import RUNNING_LISTED_MAX, Activity, RunningTask, short_id
from tracemind.worker.process import ForkedStart
from tracemind.worker.settings import PoolSettings, WorkerSpec

YOUNG_S = 10.0
"""A worker that dies before living this long counts as a failed start."""
CRASH_LOOP_AFTER = 3
MAX_BACKOFF_S = 30.0
DRAIN_TICK_S = 0.02
"""Longest wait between looks while draining (``on_tick`` keeps the heartbeat fresh)."""
FORK_BLOCKED_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
"""Blocked across fork until the child installed its own handlers (it inherits the pool's)."""
DURATION_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
MAX_FLOWS = 100
"""Flows counted apart (a metrics label each); later ones are counted under :data:`OTHER_FLOWS`."""
OTHER_FLOWS = "_other"


class ForkedProcess:
    """A forked worker, with the part of ``subprocess.Popen``'s interface the pool uses."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            with contextlib.suppress(ChildProcessError):
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid == self.pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self) -> int:
        while self.returncode is None:
            try:
                _, status = os.waitpid(self.pid, 0)
            except ChildProcessError:  # reaped elsewhere: its status is lost
                self.returncode = -1
            else:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, signum)


@dataclass
class Slot:
    index: int
    process: subprocess.Popen[bytes] | ForkedProcess | None = None
    pidfd: int | None = None
    """Readable once the worker exited (None where pidfds are unavailable)."""
    idle: bool = False
    """The worker said its last look found nothing, and has not started a task since."""
    consumer_id: str = ""
    started_s: float = 0.0
    young_deaths: int = 0
    idle_deaths: int = 0
    """Consecutive young deaths of lives that started no task (a worker that cannot start)."""
    took_task: bool = False
    respawn_at_s: float = 0.0
    events: Any = None
    buffer: bytes = b""
    running: RunningTask | None = None
    """The task this worker reported taking and not yet settling."""


@dataclass
class Outcomes:
    """What the workers reported since the pool started (Prometheus-style counters), in total
    and per flow id (``flows``; a task without one counts under ``""``)."""

    counts: Counter[str] = field(default_factory=Counter)
    duration_buckets: list[int] = field(default_factory=lambda: [0] * len(DURATION_BUCKETS_S))
    """Durations in each bucket alone: above the bound before it, up to its own (the
    cumulative counts Prometheus expects are summed up by :meth:`to_dict`)."""
    duration_sum_s: float = 0.0
    duration_count: int = 0
    flows: dict[str, Outcomes] = field(default_factory=dict)

    def started(self, attempt: int) -> None:
        if attempt == 1:
            self.counts["first_attempts"] += 1

    def add(
        self, outcome: str, duration_s: float, attempt: int, flow_id: str | None = None
    ) -> None:
        key = flow_id or ""
        if key not in self.flows and len(self.flows) >= MAX_FLOWS:
            key = OTHER_FLOWS
        bucket = bisect.bisect_left(DURATION_BUCKETS_S, duration_s)  # the first bound >= it
        for outcomes in (self, self.flows.setdefault(key, Outcomes())):
            outcomes.counts[outcome] += 1
            outcomes.duration_sum_s += duration_s
            outcomes.duration_count += 1
            if bucket < len(DURATION_BUCKETS_S):
                outcomes.duration_buckets[bucket] += 1

    def to_dict(self) -> dict[str, Any]:
        doc = {
            "counts": dict(self.counts),
            "duration_buckets_s": list(DURATION_BUCKETS_S),
            "duration_bucket_counts": list(itertools.accumulate(self.duration_buckets)),
            "duration_sum_s": self.duration_sum_s,
            "duration_count": self.duration_count,
        }
        if self.flows:
            doc["flows"] = {flow_id: flow.to_dict() for flow_id, flow in self.flows.items()}
        return doc


class WorkerPool:
    def __init__(self, settings: PoolSettings, queue: TaskQueue) -> None:
        if not 1 <= settings.size <= MAX_WORKERS:
            raise UsageError(f"a pool runs 1 to {MAX_WORKERS} workers, not {settings.size}")
        self.settings = settings
        self.queue = queue
        self.slots = [Slot(i) for i in range(settings.size)]
        self.outcomes = Outcomes()
        self.activity = Activity(since_s=time.time())
        self.stopping = False
        self.log = get_logger("tracemind.pool")
        self._preloaded = False
        self._wake_read, self._wake_write = os.pipe()
        for fd in (self._wake_read, self._wake_write):
            os.set_blocking(fd, False)

    @property
    def consumer_prefix(self) -> str:
        """Every consumer id of this pool starts with this (used to return all its leases)."""
        return f"{self.settings.instance_id}-"

    def start(self) -> None:
        for slot in self.slots:
            self._spawn(slot)

    def _spawn(self, slot: Slot) -> None:
        slot.consumer_id = f"{self.consumer_prefix}{slot.index}-{os.urandom(2).hex()}"
        read_fd, write_fd = events_pipe()
        spec = self.settings.worker_spec(slot.consumer_id, slot.index)
        if self._can_fork():
            slot.process = self._fork(spec, write_fd)
        else:
            slot.process = self._exec(spec, write_fd)
        os.close(write_fd)
        slot.events = read_fd
        slot.buffer = b""
        slot.started_s = time.monotonic()
        slot.took_task = False
        slot.idle = False
        slot.pidfd = _pidfd(slot.process.pid)
        self.log.info(
            "worker spawned", slot=slot.index, pid=slot.process.pid, consumer=slot.consumer_id
        )

    def _can_fork(self) -> bool:
        # Forking a process with other threads copies their locks in whatever state they are.
        return (
            self.settings.fork
            and hasattr(os, "fork")
            and threading.active_count() == 1
            and threading.current_thread() is threading.main_thread()
        )

    def _exec(self, spec: WorkerSpec, write_fd: int) -> subprocess.Popen[bytes]:
        env = dict(
            os.environ,
            TM_WORKER_SPEC=spec.to_json(),
            TM_WORKER_EVENTS_FD=str(write_fd),
            TM_WORKER_WAKE_FD=str(self._wake_write),
        )
        return subprocess.Popen(
            [sys.executable, "-m", "tracemind.worker.process"],
            env=env,
            pass_fds=(write_fd, self._wake_write),
            stdin=subprocess.DEVNULL,
        )

    def _fork(self, spec: WorkerSpec, write_fd: int) -> ForkedProcess:
        if not self._preloaded:
            from tracemind.worker.process import preload

            preload()
            self._preloaded = True
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()  # else the child would write the pool's buffered lines again
        # Blocking runs the handlers of signals already caught, so none is left for the child.
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, FORK_BLOCKED_SIGNALS)
        try:
            pid = os.fork()
            if pid == 0:
                self._run_forked(spec, write_fd)  # never returns
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        return ForkedProcess(pid)

    def _run_forked(self, spec: WorkerSpec, write_fd: int) -> None:
        """The forked child: the worker's main, then ``os._exit`` (no way back to the pool)."""
        code = 1
        try:
            gc.freeze()  # the pool's objects are never collected here (their fds are closed)
            signal.set_wakeup_fd(-1)  # the supervisor's self-pipe is the pool's, not ours
            keep = sorted({0, 1, 2, write_fd, self._wake_write})
            low = 0
            for fd in keep:
                if low < fd:  # closerange(n, n) would close everything from n up
                    os.closerange(low, fd)
                low = fd + 1
            os.closerange(low, _max_fd())
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.close(null)
            from tracemind.worker import process

            code = process.main(ForkedStart(spec, write_fd, self._wake_write, FORK_BLOCKED_SIGNALS))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:  # the child must not unwind into the pool: report, then exit
            traceback.print_exc()
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(OSError, ValueError):
                    stream.flush()
            os._exit(code)

    def wait(self, timeout_s: float, extra_fds: tuple[int, ...] = ()) -> None:
        """Block up to ``timeout_s``; return early when a worker exits, a worker reports idle,
        or one of ``extra_fds`` is readable (the caller drains those)."""
        if timeout_s <= 0:
            return
        poller = select.poll()
        poller.register(self._wake_read, select.POLLIN)
        for fd in extra_fds:
            poller.register(fd, select.POLLIN)
        for slot in self.slots:
            if slot.pidfd is not None:
                poller.register(slot.pidfd, select.POLLIN)
        ready = poller.poll(timeout_s * 1000)
        if any(fd == self._wake_read for fd, _ in ready):
            with contextlib.suppress(BlockingIOError):
                while os.read(self._wake_read, 4096):
                    pass

    def poll(self) -> None:
        """Reap dead workers (returning their leases), respawn due slots, collect outcomes."""
        now_s = time.monotonic()
        for slot in self.slots:
            self._read_events(slot)
            if slot.process is not None and slot.process.poll() is not None:
                self._reap(slot, now_s)
            elif slot.process is not None and now_s - slot.started_s >= YOUNG_S:
                slot.young_deaths = 0  # it outlived a failed start: no longer crash-looping
            if slot.process is None and not self.stopping and now_s >= slot.respawn_at_s:
                self.log.info("worker respawning", slot=slot.index, young_deaths=slot.young_deaths)
                self._spawn(slot)

    def _reap(self, slot: Slot, now_s: float) -> None:
        assert slot.process is not None
        code = slot.process.returncode
        lived_s = now_s - slot.started_s
        returned = self._return_leases(slot.consumer_id)
        self._read_events(slot)
        with contextlib.suppress(OSError):
            os.close(slot.events)
        if slot.pidfd is not None:
            os.close(slot.pidfd)
            slot.pidfd = None
        slot.process = None
        slot.idle = False
        lost, slot.running = slot.running, None
        if lost is not None:  # its lease is back in the queue: a failed attempt, to be rerun
            self.activity.record(
                "worker-died",
                time.time(),
                task_id=lost.task_id,
                flow_id=lost.flow_id,
                attempt=lost.attempt,
                error=f"the worker running it exited (code {code})",
            )
        if self.stopping:
            self.log.info(
                "worker exited", slot=slot.index, exit_code=code, leases_returned=returned
            )
            return
        slot.young_deaths = slot.young_deaths + 1 if lived_s < YOUNG_S else 0
        idle_death = lived_s < YOUNG_S and not slot.took_task
        slot.idle_deaths = slot.idle_deaths + 1 if idle_death else 0
        backoff_s = min(MAX_BACKOFF_S, 0.5 * 2 ** max(0, slot.young_deaths - 1))
        slot.respawn_at_s = now_s + backoff_s
        self.log.warning(
            "worker died",
            slot=slot.index,
            exit_code=code,
            lived_s=round(lived_s, 3),
            leases_returned=returned,
            respawn_in_s=backoff_s,
        )

    def _read_events(self, slot: Slot) -> None:
        if slot.process is None and slot.events is None:
            return
        try:
            while chunk := os.read(slot.events, 65536):
                slot.buffer += chunk
        except (BlockingIOError, OSError, TypeError):
            pass
        complete, _, slot.buffer = slot.buffer.rpartition(b"\n")
        if not complete:
            return
        for event in _decode_lines(complete.decode(errors="replace").split("\n")):
            try:
                self._event(slot, event)
            except (ValueError, KeyError, TypeError, AttributeError):
                continue  # not an event (see tracemind.worker.events): ignored

    def _event(self, slot: Slot, event: dict[str, Any]) -> None:
        """Take one of the worker's events into account."""
        kind = event.get("event")
        if kind == "idle":
            slot.idle = True
        elif kind == "started":
            slot.took_task = True
            slot.idle = False
            self.outcomes.started(int(event["attempt"]))
            slot.running = _running_task(event)
        elif kind == "step":
            if slot.running is not None:
                slot.running.step = short_id(event.get("step"))
        else:
            self._settled(slot, event)

    def _settled(self, slot: Slot, event: dict[str, Any]) -> None:
        """Count a worker's report of an outcome; its worker is no longer busy."""
        outcome, attempt = str(event["outcome"]), int(event["attempt"])
        flow_id = event.get("flow_id")
        self.outcomes.add(outcome, float(event["duration_s"]), attempt, flow_id)
        task_id = event.get("task_id")
        self.activity.record(
            outcome,
            time.time(),
            task_id=task_id if isinstance(task_id, str) else None,
            flow_id=flow_id if isinstance(flow_id, str) else None,
            attempt=attempt,
            error=event.get("error"),
        )
        slot.running = None

    def read_events(self) -> None:
        """Collect what the workers reported, without reaping or respawning any."""
        for slot in self.slots:
            if slot.process is not None:
                self._read_events(slot)

    def all_idle(self) -> bool:
        """Whether every live worker reported idle and took no task since (events read last)."""
        return all(slot.idle for slot in self.slots if slot.process is not None)

    def held_leases(self) -> int:
        return self.queue.held_by(self.consumer_prefix)

    def alive(self) -> int:
        return sum(1 for slot in self.slots if slot.process is not None)

    def crash_looping(self) -> bool:
        return any(slot.young_deaths >= CRASH_LOOP_AFTER for slot in self.slots)

    def failing_to_start(self) -> bool:
        """Whether a slot's workers died young :data:`CRASH_LOOP_AFTER` times in a row without
        starting a task (a runtime that cannot start, a queue they cannot write): unlike a
        task that kills its worker, which the DLQ ends, respawning cannot help."""
        return any(slot.idle_deaths >= CRASH_LOOP_AFTER for slot in self.slots)

    def status(self) -> dict[str, Any]:
        return {
            "configured": self.settings.size,
            "alive": self.alive(),
            "crash_looping": self.crash_looping(),
            "pids": [slot.process.pid for slot in self.slots if slot.process is not None],
        }

    def running(self) -> list[dict[str, Any]]:
        """What each busy worker runs (task id, flow id, attempt, step, ``started_at_s``): the
        first :data:`RUNNING_LISTED_MAX` (the list goes into the registry entry, which readers
        cap at 64 KiB)."""
        busy = [s for s in self.slots if s.running is not None and s.process is not None]
        return [
            {"slot": slot.index, **slot.running.to_dict()}
            for slot in busy[:RUNNING_LISTED_MAX]
            if slot.running is not None
        ]

    def signal_all(self, signum: int) -> None:
        for slot in self.slots:
            if slot.process is not None and slot.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    slot.process.send_signal(signum)

    def stop(self, drain_timeout_s: float, on_tick: Callable[[], None] | None = None) -> bool:
        """Ask every worker to finish its task and exit; kill those still running after
        ``drain_timeout_s``; return every lease the pool still holds. True if all drained.
        ``on_tick`` keeps running meanwhile (the daemon's heartbeat must not go stale)."""
        self.stopping = True
        self.signal_all(signal.SIGTERM)
        deadline_s = time.monotonic() + drain_timeout_s
        while True:
            self.poll()
            if on_tick is not None:
                on_tick()  # also after the last reap: e.g. "fast stop requested" gets logged
            now_s = time.monotonic()
            if not self.alive() or now_s >= deadline_s:
                break
            self.wait(min(DRAIN_TICK_S, deadline_s - now_s))
        drained = self.alive() == 0
        if not drained:
            self.log.warning("drain timeout: killing workers", still_running=self.alive())
            self.kill()
        self._return_leases(self.consumer_prefix)
        return drained

    def _return_leases(self, consumer_prefix: str) -> int:
        """Return the leases of consumers named ``consumer_prefix…``; 0 while the server
        cannot be reached (they return by themselves once their lease time passed)."""
        try:
            return self.queue.recover([consumer_prefix])
        except QueueUnavailable as exc:
            self.log.warning(
                "leases not returned: queue unreachable; they return after the lease time",
                consumers=consumer_prefix,
                error=str(exc),
            )
            return 0

    def kill(self) -> None:
        self.stopping = True
        self.signal_all(signal.SIGKILL)
        for slot in self.slots:
            if slot.process is not None:
                slot.process.wait()
                self._reap(slot, time.monotonic())

    def close(self) -> None:
        """Release the wake pipe (once the pool is stopped)."""
        for fd in (self._wake_read, self._wake_write):
            with contextlib.suppress(OSError):
                os.close(fd)


def _decode_lines(lines: list[str]) -> list[Any]:
    """The JSON value of each line; a line that holds none is left out. All lines are decoded
    at once, as one array (a draining worker reports four lines a task, and the decoder's cost
    is mostly per call), unless one of them is not JSON: then line by line."""
    try:
        values: list[Any] = json.loads("[" + ",".join(lines) + "]")
    except ValueError:
        pass
    else:
        if len(values) == len(lines):  # (else a line held more than one value)
            return values
    decoded = []
    for line in lines:
        try:
            decoded.append(json.loads(line))
        except ValueError:
            continue
    return decoded


def _running_task(event: dict[str, Any]) -> RunningTask | None:
    """The task a ``started`` event names (None from a worker that names none)."""
    task_id = event.get("task_id")
    if not isinstance(task_id, str):
        return None
    return RunningTask(task_id, short_id(event.get("flow_id")), int(event["attempt"]), time.time())


EVENTS_PIPE_BYTES = 1 << 20
"""What a worker's events pipe holds where the system allows (Linux's default limit for a user:
1 MiB). A worker draining a backlog reports ~1 MB of events a second, and its pool reads them
once a tick, or later while its upkeep runs; a full pipe stops the worker until then."""


def events_pipe() -> tuple[int, int]:
    """A new pipe for a worker's events: (its read end, non-blocking; its write end). It holds
    :data:`EVENTS_PIPE_BYTES` on Linux within the system's limit for this user (elsewhere, or
    past that limit, the system's default)."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    set_size = getattr(fcntl, "F_SETPIPE_SZ", None)
    if set_size is not None:
        with contextlib.suppress(OSError):
            fcntl.fcntl(read_fd, set_size, EVENTS_PIPE_BYTES)
    return read_fd, write_fd


def _pidfd(pid: int) -> int | None:
    """A descriptor that becomes readable when ``pid`` exits (None: not on this system)."""
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None
    os.set_inheritable(fd, False)
    return fd


def _max_fd() -> int:
    try:
        return max(int(os.sysconf("SC_OPEN_MAX")), 1024)
    except (AttributeError, OSError, ValueError):
        return 65536
