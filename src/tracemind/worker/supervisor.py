"""The supervision loop shared by ``tm workers start`` and the daemon.

One thread runs it: poll the pool (reap, respawn), return expired leases of any consumer every
second, and in burst mode stop once nothing is pending or delayed and this pool holds no lease
(or once its workers keep dying before they start a task: a batch job fails rather than
respawn them forever; a task that kills its workers is ended by the DLQ instead).
The first SIGTERM/SIGINT drains (workers finish their tasks, up to the drain timeout); a second
one stops fast — workers are killed and their leases returned.

Between looks the loop sleeps in :meth:`WorkerPool.wait`, at most :data:`TICK_S`, and wakes at
once for a signal (a self-pipe, ``signal.set_wakeup_fd``), a worker's exit (its pidfd), a
worker reporting idle (burst mode) or :meth:`Supervisor.request_stop` from another thread.
A burst pool looks at the queue only once every live worker reported idle, so it stops within
a few milliseconds of the last result being committed.

While the queue's server cannot be reached (:class:`~tracemind.errors.QueueUnavailable`) a
pool that serves (not ``burst``) keeps supervising: its upkeep is retried with the outage's
backoff, at least every :data:`RECOVER_EVERY_S`, and its workers wait too. A burst pool stops
with the error instead (a batch job fails rather than waiting without a bound).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType

from tracemind.errors import QueueUnavailable
from tracemind.log import get_logger
from tracemind.queue.protocol import TaskQueue
from tracemind.worker.outage import Outage
from tracemind.worker.pool import WorkerPool

TICK_S = 0.05
RECOVER_EVERY_S = 1.0


class Supervisor:
    def __init__(
        self,
        pool: WorkerPool,
        queue: TaskQueue,
        *,
        drain_timeout_s: float,
        burst: bool = False,
        on_tick: Callable[[], None] | None = None,
        on_drain: Callable[[], None] | None = None,
        upkeep: Callable[[], object] | None = None,
    ) -> None:
        self.pool = pool
        self.queue = queue
        self.upkeep = upkeep
        self.drain_timeout_s = drain_timeout_s
        self.burst = burst
        self.on_tick = on_tick
        self.on_drain = on_drain
        self.stop_requested = threading.Event()
        self.signals_seen = 0
        self.last_signal: str | None = None
        self._fast_stop_logged = False
        self.crash_looped = False
        """In burst mode: the run ended because the workers kept dying at start."""
        self.log = get_logger("tracemind.supervisor")
        self.outage = Outage(self.log)
        """The queue as the upkeep last found it (``outage.reason``: why it is unreachable)."""
        self._wake_read, self._wake_write = os.pipe()  # kept open while this process lives
        for fd in (self._wake_read, self._wake_write):
            os.set_blocking(fd, False)
        self._previous_wakeup_fd: int | None = None

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT drain; every signal with a handler wakes the loop (main thread)."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        self._previous_wakeup_fd = signal.set_wakeup_fd(self._wake_write, warn_on_full_buffer=False)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Only flags and kill(2) here: logging or file I/O could deadlock on a lock the
        # interrupted main thread holds. The loop does the rest within one tick.
        self.signals_seen += 1
        self.last_signal = signal.Signals(signum).name
        if self.signals_seen == 1:
            self.stop_requested.set()
        else:
            self.pool.signal_all(signal.SIGKILL)

    def _recover(self) -> None:
        """Return expired leases, then the upkeep: the caller's (``Backend.maintain``: the
        queue's books, settling staged submissions, retention), else the queue's own
        (:meth:`TaskQueue.maintain`)."""
        self.queue.recover()
        if self.upkeep is not None:
            self.upkeep()
        else:
            self.queue.maintain()

    def _recover_or_wait(self) -> float:
        """:meth:`_recover`; the seconds until the next one (sooner while the server is
        unreachable, unless this is a burst pool: then the error ends the run)."""
        try:
            self._recover()
        except QueueUnavailable as exc:
            if self.burst:
                raise
            return min(RECOVER_EVERY_S, self.outage.failed(exc))
        self.outage.recovered()
        return RECOVER_EVERY_S

    def request_stop(self) -> None:
        """Begin the drain (from the loop's own thread or any other; never blocks)."""
        self.stop_requested.set()
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full: a wake-up is pending anyway
            os.write(self._wake_write, b"s")

    def _sleep(self, timeout_s: float) -> None:
        """Wait for the next look: up to ``timeout_s``, less when something happened."""
        if self.stop_requested.is_set():
            return
        self.pool.wait(timeout_s, (self._wake_read,))
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_read, 4096):
                pass

    @property
    def draining(self) -> bool:
        return self.stop_requested.is_set()

    def run(self) -> bool:
        """Supervise until a stop is requested (or, in burst mode, the queue is empty); then
        drain. Returns True when every worker finished in time."""
        try:
            return self._run()
        finally:
            self.pool.close()
            if signal.set_wakeup_fd(-1) not in (-1, self._wake_write):  # not ours: put back
                self._previous_wakeup_fd = signal.set_wakeup_fd(
                    self._wake_write, warn_on_full_buffer=False
                )
                signal.set_wakeup_fd(-1)

    def _run(self) -> bool:
        self.pool.start()
        next_recover_s = time.monotonic()  # the first upkeep runs while the workers start
        while not self.stop_requested.is_set():
            self.pool.poll()
            now_s = time.monotonic()
            if now_s >= next_recover_s:
                next_recover_s = now_s + self._recover_or_wait()
            if self.burst and self.pool.failing_to_start():
                # A batch job fails instead of respawning forever (e.g. a read-only queue).
                self.log.error("burst stopped: workers are crash-looping")
                self.crash_looped = True
                break
            if self.burst and self._burst_done():
                self.log.info("burst finished: nothing pending or delayed")
                break
            if self.on_tick is not None:
                self.on_tick()
            self._sleep(TICK_S)
        if self.last_signal is not None:
            self.log.info("drain requested", signal=self.last_signal)
        self.log.info("drain begin", timeout_s=self.drain_timeout_s)
        if self.on_drain is not None:
            self.on_drain()  # e.g. readiness turns 503 before the workers are told
        drained = self.pool.stop(self.drain_timeout_s, on_tick=self._drain_tick)
        self.log.info("drain end", drained=drained)
        return drained

    def _drain_tick(self) -> None:
        if self.signals_seen > 1 and not self._fast_stop_logged:
            self._fast_stop_logged = True
            self.log.warning("fast stop requested", signal=self.last_signal)
        if self.on_tick is not None:
            self.on_tick()

    def _burst_done(self) -> bool:
        """Whether a burst pool may stop: every live worker reported idle (each committed its
        acks first), this pool holds no lease and nothing is pending or delayed.

        One look lists inflight/, then the waiting tasks: a task one of our workers claims
        between the two listings is in neither. So a second listing of inflight/ follows, then
        the workers' reports are read again: such a task is still in flight at that listing,
        or its worker reported taking it before the listing began."""
        if not self.pool.all_idle():
            return False
        if self.pool.held_leases() > 0 or self.queue.has_waiting():
            return False
        if self.pool.held_leases() > 0:
            return False
        self.pool.read_events()
        return self.pool.all_idle()
