"""The supervision loop shared by ``tm workers start`` and the daemon.

One thread runs it: poll the pool (reap, respawn), return expired leases of any consumer every
second, and in burst mode stop once nothing is pending or delayed and this pool holds no lease
(or once its workers keep dying before they start a task: a batch job fails rather than
respawn them forever; a task that kills its workers is ended by the DLQ instead).
The first SIGTERM/SIGINT drains (workers finish their tasks, up to the drain timeout); a second
one stops fast — workers are killed and their leases returned.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from types import FrameType

from tracemind.log import get_logger
from tracemind.queue.protocol import TaskQueue
from tracemind.worker.pool import WorkerPool

TICK_S = 0.05
RECOVER_EVERY_S = 1.0
BURST_IDLE_CHECKS = 2
"""Consecutive idle looks before a burst pool stops. One look lists inflight/, then pending/: a
task claimed between the two listings is in neither, but the next look sees it in inflight/."""


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

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

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
        """Return expired leases, keep the queue's own books (:meth:`TaskQueue.maintain`), and
        run the caller's upkeep (settling staged submissions, retention)."""
        self.queue.recover()
        self.queue.maintain()
        if self.upkeep is not None:
            self.upkeep()

    def request_stop(self) -> None:
        """Begin the drain (from the loop's own thread or any other; never blocks)."""
        self.stop_requested.set()

    @property
    def draining(self) -> bool:
        return self.stop_requested.is_set()

    def run(self) -> bool:
        """Supervise until a stop is requested (or, in burst mode, the queue is empty); then
        drain. Returns True when every worker finished in time."""
        self._recover()
        self.pool.start()
        next_recover_s = 0.0
        idle_checks = 0
        while not self.stop_requested.is_set():
            self.pool.poll()
            now_s = time.monotonic()
            if now_s >= next_recover_s:
                self._recover()
                next_recover_s = now_s + RECOVER_EVERY_S
            if self.burst and self.pool.failing_to_start():
                # A batch job fails instead of respawning forever (e.g. a read-only queue).
                self.log.error("burst stopped: workers are crash-looping")
                self.crash_looped = True
                break
            if self.burst:
                idle_checks = idle_checks + 1 if self._idle() else 0
                if idle_checks >= BURST_IDLE_CHECKS:
                    self.log.info("burst finished: nothing pending or delayed")
                    break
            if self.on_tick is not None:
                self.on_tick()
            self.stop_requested.wait(TICK_S)
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

    def _idle(self) -> bool:
        if self.pool.held_leases() > 0:
            return False
        return not self.queue.has_waiting()
