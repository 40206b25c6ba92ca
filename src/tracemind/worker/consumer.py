"""One consumer: lease a task, run it while renewing its lease, then ack, retry or dead-letter.

``run_once`` is the single-step seam tests drive; ``run`` loops until asked to stop. The lease is
renewed every third of its length for as long as the task runs, however long that is; only an
explicit per-flow ``timeout_s`` stops a long task.

While the queue's server cannot be reached (:class:`~tracemind.errors.QueueUnavailable`) the
consumer keeps its place: an idle one retries its look with a bounded backoff, a busy one keeps
running its task while renewals are retried, and its outcome is recorded once the server is
back (an outcome is never dropped; if the lease lapsed meanwhile and another consumer took the
task, the task runs twice: the contract's "unless its worker died" case, from the queue's view).
"""

from __future__ import annotations

import functools
import random
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from tracemind.errors import Cancelled, QueueUnavailable
from tracemind.log import get_logger
from tracemind.queue.protocol import Failure, Lease, LeaseLost, TaskQueue
from tracemind.queue.records import max_attempts_of, policy_of
from tracemind.threads import start_helper_thread
from tracemind.worker.outage import Outage
from tracemind.worker.runtime import NonRetryable, Runtime, Task

IDLE_WAIT_S = 0.1
"""Longest an idle consumer sleeps between looks; new tasks wake it at once (inotify, unless it
was made with ``wake_on_arrival=False``), and a stop request from a signal handler
(:meth:`Consumer.stop_from_signal`) ends the wait at once."""


class _StopWaiting(BaseException):
    """Raised by :meth:`Consumer.stop_from_signal` to end an idle wait; never leaves ``run``.
    A BaseException, so that no ``except Exception`` on the way takes it for a failure."""


class TaskTimeout(Exception):
    """The task ran longer than its flow's ``timeout_s``."""


class LeaseKeeper:
    """Renews the lease its consumer holds, every third of the lease, on one background thread
    that lives as long as the consumer. Renewals stop the moment :meth:`holding` ends, so the
    consumer then settles the lease alone."""

    def __init__(self, queue: TaskQueue, lease_s: float) -> None:
        self.queue = queue
        self.lease_s = lease_s
        self.lost = False
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._lease: Lease | None = None
        self._renewed_at_s = 0.0  # monotonic: when the lease held now was taken or last renewed
        self._idle = False
        self._thread: threading.Thread | None = None

    @contextmanager
    def holding(self, lease: Lease) -> Iterator[LeaseKeeper]:
        with self._lock:
            self._lease, self.lost = lease, False
            self._renewed_at_s = time.monotonic()
            if self._idle:  # otherwise the thread is in a timed wait that ends before the renewal
                self._changed.notify()
        if self._thread is None:
            self._thread = start_helper_thread(self._run, "lease-keeper")
        try:
            yield self
        finally:
            with self._lock:  # waits for a renewal in progress; none starts after this
                self._lease = None

    def _run(self) -> None:
        log = get_logger("tracemind.worker")
        outage = Outage(log.bind(during="lease renewal"))
        with self._lock:
            while True:
                lease = self._lease
                if lease is None:
                    self._idle = True
                    self._changed.wait()
                    self._idle = False
                    continue
                # Renew a third into the lease, then look again. A lease that replaces this
                # one during the wait was taken later, so the wait ends before it is due.
                renew_in_s = self._renewed_at_s + self.lease_s / 3 - time.monotonic()
                if renew_in_s > 0:
                    self._changed.wait(timeout=renew_in_s)
                    continue
                try:
                    self.queue.renew(lease, self.lease_s)
                    self._renewed_at_s = time.monotonic()
                    outage.recovered()
                except QueueUnavailable as exc:  # try again soon, while the lease may hold
                    self._changed.wait(timeout=outage.failed(exc))
                except LeaseLost:
                    self.lost, self._lease = True, None
                    log.error("lease lost while the task ran", task_id=lease.task_id)


@contextmanager
def time_limit(timeout_s: float | None) -> Iterator[None]:
    """Raise TaskTimeout in the main thread after ``timeout_s`` (no limit for None)."""
    if not timeout_s or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: FrameType | None) -> None:
        raise TaskTimeout(f"task exceeded its flow's timeout_s={timeout_s:g}")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Consumer:
    def __init__(
        self,
        queue: TaskQueue,
        runtime: Runtime,
        consumer_id: str,
        *,
        lease_s: float,
        rng: random.Random | None = None,
        on_finished: Callable[[str, float, int, str | None], None] | None = None,
        on_started: Callable[[Task], None] | None = None,
        on_idle: Callable[[], None] | None = None,
        on_step: Callable[[str], None] | None = None,
        wake_on_arrival: bool = True,
    ) -> None:
        """``on_started(task)`` when a task is taken; ``on_step(step_id)`` when the runtime
        begins a step (runtimes that report steps); ``on_finished(outcome, duration_s, attempt,
        error)`` once its outcome is recorded (``error``: the failure's message, else None).

        ``wake_on_arrival=False``: an idle consumer looks again every :data:`IDLE_WAIT_S`
        instead of asking the queue to wake it when a task arrives. For a burst pool's workers,
        stopped as soon as they are idle: the file queue's watch costs nothing to keep but up
        to ~20 ms to tear down when the process exits (the kernel waits for a grace period),
        and every worker of a burst would make one at its end, just to tear it down."""
        self.queue = queue
        self.runtime = runtime
        self.consumer_id = consumer_id
        self.lease_s = lease_s
        self.rng = rng or random.Random()
        self.on_finished = on_finished
        self.on_started = on_started
        self.on_idle = on_idle
        self.on_step = on_step
        self.wake_on_arrival = wake_on_arrival
        self.stopping = threading.Event()
        self._interruptible = False  # True only while run() waits idle in the main thread
        self.keeper = LeaseKeeper(queue, lease_s)
        self.log = get_logger("tracemind.worker")
        self.outage = Outage(self.log)

    def run(self) -> None:
        """Process tasks until :attr:`stopping` is set (a task in progress is finished first);
        returns once every ack is committed.

        Each time a look finds nothing due after the consumer started or ran a task, its acks
        are committed before it waits (so the results of a queue that ran dry show at once, and
        none is left in flight), then ``on_idle`` is called if given: a burst pool stops once
        every worker said so and nothing waits."""
        busy = True
        try:
            while not self.stopping.is_set():
                try:
                    if self.run_once():
                        busy = True
                        continue
                    if busy:
                        self.queue.flush()
                        if self.on_idle is not None:
                            self.on_idle()
                    busy = False
                    self._wait_idle()
                    self.outage.recovered()
                except QueueUnavailable as exc:
                    self._pause(self.outage.failed(exc))
        except _StopWaiting:
            pass
        finally:
            self._interruptible = False
            self.queue.flush()

    def _wait_idle(self) -> None:
        try:
            self._interruptible = True
            if self.stopping.is_set():
                return
            if self.wake_on_arrival:
                self.queue.wait_for_work(IDLE_WAIT_S)
            else:
                time.sleep(IDLE_WAIT_S)
        finally:
            self._interruptible = False

    def _pause(self, delay_s: float) -> None:
        """Sleep ``delay_s`` before the next try; a stop request ends the sleep at once."""
        try:
            self._interruptible = True
            if not self.stopping.is_set():
                time.sleep(delay_s)
        finally:
            self._interruptible = False

    def stop_from_signal(self) -> None:
        """Ask :meth:`run` to stop; for a signal handler (which runs in the main thread). An
        idle wait ends at once, by an exception from the handler; a task in progress is
        finished first. Once ``stopping`` is set no wait begins, so a later signal raises
        nothing."""
        self.stopping.set()
        if self._interruptible:
            self._interruptible = False
            raise _StopWaiting

    def run_once(self) -> bool:
        """Lease and process at most one task; False when none was due."""
        lease = self.queue.lease(self.consumer_id, self.lease_s)
        if lease is None:
            return False
        from structlog.contextvars import bind_contextvars, reset_contextvars

        # Every line logged while the task runs carries these (the stdlib's too, see log.py).
        tokens = bind_contextvars(
            task_id=lease.task_id, flow_id=lease.record.get("flow_id"), attempt=lease.attempt
        )
        try:
            self._process(lease)
        finally:
            reset_contextvars(**tokens)
        return True

    def _process(self, lease: Lease) -> None:
        task = Task(
            lease.task_id,
            lease.record.get("flow_id"),
            lease.attempt,
            lease.record,
            cancel_requested=functools.partial(self._cancel_requested, lease.task_id),
            on_step=self.on_step or _ignore_step,
        )
        self.log.info("task started")
        if self.on_started is not None:
            self.on_started(task)
        started_s = time.monotonic()
        outcome: str
        with self.keeper.holding(lease) as keeper:
            result: dict[str, Any] | None = None
            failure: Failure | None = None
            retryable = True
            cancelled = False
            try:
                with time_limit(_timeout_s(lease.record)):
                    returned: Any = self.runtime.execute(task)
                # A user runtime may return anything; a result is always stored as an object.
                result = returned if isinstance(returned, dict) else {"value": returned}
            except Cancelled:
                cancelled = True
            except NonRetryable as exc:
                failure, retryable = Failure(str(exc), traceback.format_exc()), False
            except Exception as exc:  # a step's failure, whatever it is, is the task's outcome
                failure = Failure(f"{type(exc).__name__}: {exc}", traceback.format_exc())
        if keeper.lost:
            self.log.warning("lease was lost; the task will run again elsewhere")
            return
        try:
            outcome = self._record(lease, cancelled, result, failure, retryable)
        except LeaseLost:
            self.log.warning("lease was lost before the outcome was recorded")
            return
        self.log.info("task " + outcome, error=failure.error if failure else None)
        if self.on_finished is not None:
            error = failure.error if failure is not None else None
            self.on_finished(outcome, time.monotonic() - started_s, lease.attempt, error)

    def _cancel_requested(self, task_id: str) -> bool:
        """Whether the task's cancellation was requested; False while the server cannot say
        (the task goes on, and the next look asks again)."""
        try:
            return self.queue.cancel_requested(task_id)
        except QueueUnavailable:
            return False

    def _record(
        self,
        lease: Lease,
        cancelled: bool,
        result: dict[str, Any] | None,
        failure: Failure | None,
        retryable: bool,
    ) -> str:
        """Record the outcome, retrying while the server cannot be reached (each verb is
        atomic, and one that ran before its reply was lost finds the task settled: LeaseLost,
        or an ack that changes nothing)."""
        while True:
            try:
                if cancelled:
                    self.queue.cancel_leased(lease)
                    outcome = "cancelled"
                else:
                    outcome = self._settle(lease, result, failure, retryable)
            except QueueUnavailable as exc:
                time.sleep(self.outage.failed(exc))
                continue
            self.outage.recovered()
            return outcome

    def _settle(
        self,
        lease: Lease,
        result: dict[str, Any] | None,
        failure: Failure | None,
        retryable: bool,
    ) -> str:
        if failure is None:
            self.queue.ack(lease, result or {})
            return "succeeded"
        max_attempts = max_attempts_of(lease.record)
        if retryable and lease.attempt < max_attempts:
            delay_s = _retry_policy_delay_ms(lease.record, lease.attempt, self.rng) / 1000
            self.queue.retry(lease, failure, delay_s)
            return "retrying"
        self.queue.dead_letter(lease, failure)
        return "dead-lettered"


def _ignore_step(step_id: str) -> None:
    """The step callback of a consumer that reports no steps."""


def _timeout_s(record: dict[str, Any]) -> float | None:
    value = policy_of(record).get("timeout_s")
    return float(value) if isinstance(value, int | float) and value > 0 else None


def _retry_policy_delay_ms(record: dict[str, Any], attempt: int, rng: random.Random) -> float:
    from tracemind.flows.model import RetryPolicy

    raw = policy_of(record).get("retry") or {}
    try:
        policy = RetryPolicy(**raw)
    except (TypeError, ValueError):
        policy = RetryPolicy()
    return policy.delay_ms(attempt, rng)
