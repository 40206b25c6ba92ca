"""The daemon itself (``tm daemon start --foreground``): lifecycle only.

Start-up order: logging, the state dir (must be writable), the state-dir lock (a second daemon
reports the first and exits 0), the location (must be writable; prepared), return the leases a
dead predecessor left, metadata, then
the worker pool under the supervisor, whose tick refreshes the heartbeat every second and picks
up stop requests. Stop: drain (workers finish, up to ``drain_timeout_s``), return leases, exit 0.

Once started, a daemon outlives its queue's server: while it cannot be reached
(:class:`~tracemind.errors.QueueUnavailable`) the heartbeat file still beats, says
``ready: false`` with the error line as ``reason`` (``/readyz`` answers 503, ``ps`` shows it),
the workers and the upkeep retry with a bounded backoff, and everything resumes by itself when
the server is back (the registration first of all).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from tracemind import __version__
from tracemind.backend.registration import registration
from tracemind.clock import iso_utc
from tracemind.daemon.identity import describe_self
from tracemind.daemon.settings import Component, DaemonSettings
from tracemind.daemon.state import HEARTBEAT_INTERVAL_S, StateDir
from tracemind.errors import QueueError, QueueUnavailable, TraceMindError
from tracemind.flows.hooks import import_path
from tracemind.fsutil import check_dirs_writable, not_writable
from tracemind.log import get_logger

if TYPE_CHECKING:
    from tracemind.backend.protocol import Backend

LOCK_WAIT_S = 3.0
CENSUS_BUDGET = 0.05
"""Largest share of the supervisor's time that counting waiting tasks may take (deep backlogs)."""
EXIT_ALREADY_RUNNING = 0


class Daemon:
    def __init__(self, settings: DaemonSettings, log_sink: Any = None) -> None:
        self.settings = settings
        self.log_sink = log_sink
        self.state = StateDir(settings.state_dir)
        self.log = get_logger("tracemind.daemon").bind(instance_id=settings.instance_id)
        self.components: dict[str, Component] = {}
        self._next_beat_s = 0.0
        self._enqueued_total = 0
        self._next_census_s = 0.0  # monotonic: when _count_enqueued may list pending/ again
        self.started_s = time.time()
        self._stop_seen = False
        self._bad_stop_request_logged = False
        self._reopen_requested = False

    def run(self) -> int:
        """Run until stopped; 0 after a drain (or when another daemon already runs)."""
        from tracemind.backend import open_backend
        from tracemind.worker.runtime import load_factory

        s = self.settings
        backend = open_backend(s.location, durable=s.pool.worker.durable)
        check_dirs_writable(s.state_dir)
        self.state.prepare()
        lock_fd = self._take_lock()
        if lock_fd is None:
            return EXIT_ALREADY_RUNNING
        try:
            load_factory(s.pool.worker.runtime)
            backend.prepare()
            self._return_predecessor_leases(backend.queue)
            self.state.clear_stop_request()
            self._write_metadata()
            self._build_supervisor(backend)
            self.supervisor.install_signal_handlers()
            signal.signal(signal.SIGHUP, self._on_hup)
            self._start_components(backend)
            self.log.info("daemon started", pid=os.getpid(), workers=s.pool.size)
            drained = self.supervisor.run()
            self._stop_components()
            self._beat(stopped=True)
            self.log.info("daemon stopped", drained=drained)
            return 0
        finally:
            os.close(lock_fd)

    def _take_lock(self) -> int | None:
        """The held lock fd; None when a live daemon answers (it is reported on stderr).
        Raises TraceMindError when the lock is held by something that does not answer."""
        from tracemind.daemon.control import running_daemon

        for _ in range(3):  # the holder may exit between our attempt and our look at it
            lock_fd = self.state.acquire_lock(LOCK_WAIT_S)
            if lock_fd is not None:
                return lock_fd
            pid = running_daemon(self.state)
            if pid is not None:
                self.log.info("another daemon is running", pid=pid)
                print(f"tm: daemon already running (pid {pid})", file=sys.stderr)
                return None
        raise TraceMindError(f"{self.state.lock_path}: taken by another start each time; retry")

    def _build_supervisor(self, backend: Backend) -> None:
        from tracemind.worker.pool import WorkerPool
        from tracemind.worker.supervisor import Supervisor

        self.backend = backend
        self.queue = backend.queue
        self.pool = WorkerPool(self.settings.pool, backend.queue)
        self.supervisor = Supervisor(
            self.pool,
            backend.queue,
            drain_timeout_s=self.settings.drain_timeout_s,
            on_tick=self._tick,
            on_drain=self._on_drain,
            upkeep=backend.maintain,
        )

    def _on_drain(self) -> None:
        """The drain begins: readiness turns 503 at once, and triggers stop submitting (the
        status server keeps answering until the workers are done)."""
        self._beat()
        triggers = self.components.get("triggers")
        if triggers is not None:
            triggers.stop()

    def _start_components(self, backend: Backend) -> None:
        """Start the optional components (status server, triggers) configured for this run."""
        from tracemind.daemon.components import build_components

        for name, component in build_components(self.settings, backend).items():
            try:
                component.start()
            except BaseException:
                self._stop_components()
                raise
            self.components[name] = component
            self.log.info("component started", component=name)

    def _stop_components(self) -> None:
        for name, component in reversed(list(self.components.items())):
            try:
                component.stop()
            except TraceMindError as exc:
                self.log.error("component failed to stop", component=name, error=str(exc))

    def _return_predecessor_leases(self, queue: Any) -> None:
        previous = self.state.meta()
        if previous and isinstance(previous.get("instance_id"), str):
            returned = queue.recover([f"{previous['instance_id']}-"])
            if returned:
                self.log.warning(
                    "returned leases of a dead daemon",
                    previous_instance=previous["instance_id"],
                    leases=returned,
                )

    def _write_metadata(self) -> None:
        s = self.settings
        now_s = self.started_s
        meta = {
            **describe_self(),
            "instance_id": s.instance_id,
            "started_at": iso_utc(now_s),
            "started_at_s": now_s,
            "version": __version__,
            "queue_url": s.location.redacted(),  # (never a password in a file)
            "state_dir": str(s.state_dir),
            "workers": s.pool.size,
            "runtime": s.pool.worker.runtime,
            "lease_s": s.pool.worker.lease_s,
            "drain_timeout_s": s.drain_timeout_s,
            "log_file": s.pool.worker.log_file,
            "status_url": status_url(s.status_bind),
            # Where the status server is reachable from outside (compose: the published port).
            "status_url_published": os.environ.get("TM_STATUS_PUBLISHED_URL") or None,
            "triggers_config": str(s.triggers_config) if s.triggers_config else None,
            "app_dirs": list(s.app_dirs),
            "import_path": import_path(s.app_dirs),  # where workers import hooks from
        }
        self.state.write_pid(os.getpid())
        self.state.write_json(self.state.meta_path, meta)

    def _tick(self) -> None:
        if self._reopen_requested:
            self._reopen_requested = False
            self._reopen_log()
        if not self._stop_seen and os.path.lexists(self.state.stop_request_path):
            request = self.state.read_json(self.state.stop_request_path)
            if request is None:  # damaged, or not a file `tm daemon stop` writes: not a request
                if not self._bad_stop_request_logged:
                    self._bad_stop_request_logged = True
                    self.log.warning(
                        "stop request ignored: not a readable request",
                        path=str(self.state.stop_request_path),
                    )
            elif request.get("instance_id") in (None, self.settings.instance_id):
                self._stop_seen = True
                self.log.info("stop requested", by=request.get("by"))
                self.state.write_json(
                    self.state.stop_ack_path,
                    {"instance_id": self.settings.instance_id, "at": time.time()},
                )
                self.supervisor.request_stop()
        if time.monotonic() >= self._next_beat_s:
            self._beat()
            self._next_beat_s = time.monotonic() + HEARTBEAT_INTERVAL_S

    def _beat(self, *, stopped: bool = False) -> None:
        """Write the heartbeat file, then (re)register in the queue; while the queue cannot be
        reached the file says why and the registration waits for the next beat."""
        pool_status = self.pool.status()
        draining = self.supervisor.draining
        ready, reason = self._readiness(pool_status, draining)
        enqueued_total, busy = self._enqueued_total, None
        try:
            # While the supervisor's upkeep finds the server away (it tries every second),
            # the beat asks nothing of it: a server that does not answer (a network partition)
            # would make each call wait for its connect timeout, and the heartbeat go stale.
            if not self.supervisor.outage.ongoing:
                enqueued_total = self._count_enqueued()
                busy = self.pool.held_leases()
        except QueueUnavailable as exc:
            ready, reason = False, reason or str(exc)
        beat = {
            "instance_id": self.settings.instance_id,
            "at": time.time(),
            "pid": os.getpid(),
            "draining": draining,
            "stopped": stopped,
            "workers": pool_status,
            "ready": ready and not stopped,
            "reason": reason,
            "outcomes": self.pool.outcomes.to_dict(),
            "enqueued_total": enqueued_total,
            "pruned": dict(self.backend.pruned()),
            "components": {name: c.describe() for name, c in self.components.items()},
            "activity": self.pool.activity.to_dict(time.time()),
        }
        with contextlib.suppress(OSError):
            self.state.write_json(self.state.heartbeat_path, beat)
        if busy is None:
            return  # unreachable: registered again (or deregistered) by a later beat
        try:
            self._register(stopped, pool_status, draining, busy)
        except QueueUnavailable as exc:
            self.log.warning("registration not written: queue unreachable", error=str(exc))

    def _register(
        self, stopped: bool, pool_status: dict[str, Any], draining: bool, busy: int
    ) -> None:
        """Renew this daemon's entry in the queue's registry (remove it once ``stopped``)."""
        if stopped:
            self.backend.registry.deregister(self.settings.instance_id)
        else:
            entry = registration(
                self.settings.instance_id,
                kind="daemon",
                state_dir=str(self.state.root),
                started_s=self.started_s,
                workers={
                    "configured": self.settings.pool.size,
                    "alive": int(pool_status.get("alive") or 0),
                    "busy": busy,
                },
                draining=draining,
            )
            # What its busy workers run, for the dashboard (ids only; a bounded list).
            entry["running"] = self.pool.running()
            self.backend.registry.register(entry)

    def _count_enqueued(self) -> int:
        """Tasks enqueued (by any process) since this daemon started: first attempts its workers
        took up plus tasks still waiting for one. Kept monotonic, as a Prometheus counter must
        be, across the instant a task moves from waiting to taken up.

        Counting the waiting tasks lists ``pending/``, which with a deep backlog costs tens of
        milliseconds per 10,000 tasks: it runs with the heartbeat, but is skipped (the counter
        then follows the tasks taken up alone) while it would use more than
        :data:`CENSUS_BUDGET` of the supervisor's time."""
        taken = self.pool.outcomes.counts["first_attempts"]
        started_s = time.monotonic()
        if started_s < self._next_census_s:
            self._enqueued_total = max(self._enqueued_total, taken)
            return self._enqueued_total
        waiting = self.backend.waiting_since(self.started_s)
        self._enqueued_total = max(self._enqueued_total, taken + waiting)
        self._next_census_s = started_s + (time.monotonic() - started_s) / CENSUS_BUDGET
        return self._enqueued_total

    def _readiness(self, pool_status: dict[str, Any], draining: bool) -> tuple[bool, str | None]:
        if draining:
            return False, "draining"
        if pool_status.get("crash_looping"):
            return False, "workers are crash-looping"
        if pool_status.get("alive", 0) < self.settings.pool.size:
            return False, "workers not alive"
        if self.supervisor.outage.reason is not None:
            return False, self.supervisor.outage.reason
        problems = self.backend.problems()
        if problems:
            return False, problems[0]
        return True, None

    def _on_hup(self, signum: int, frame: FrameType | None) -> None:
        # Only take note: the handler runs in the main thread, which may be inside a log write
        # holding the (non-reentrant) log locks that a reopen or a log call here would wait for.
        self._reopen_requested = True

    def _reopen_log(self) -> None:
        from tracemind.log import LogFile

        if isinstance(self.log_sink, LogFile):
            self.log_sink.reopen()
        self.pool.signal_all(signal.SIGHUP)
        self.log.info("log file reopened")


def status_url(bind: str | None) -> str | None:
    if not bind:
        return None
    host, _, port = bind.rpartition(":")
    if host in ("0.0.0.0", "", "::"):
        host = "127.0.0.1"
    return f"http://{host}:{port}"


def check_log_writable(log_file: Path) -> None:
    """Raise QueueError when the log file cannot be appended to (or created: its directory is
    probed, the file itself is left for the daemon to create)."""
    if not log_file.exists():
        check_dirs_writable(log_file.parent)
        return
    from tracemind.fsutil import DamagedEntry, open_append_regular

    try:
        os.close(open_append_regular(log_file))  # (a FIFO there fails, never blocks)
    except DamagedEntry as exc:
        raise QueueError(f"{exc}: the daemon's log must be a regular file") from None
    except OSError as exc:
        raise not_writable(log_file, exc) from None
