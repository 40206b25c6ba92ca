"""The queue contract: a handful of verbs, and the guarantees every backend must keep.

A *task* is a JSON-serializable record (its flow snapshot, input, idempotency key, retry policy,
attempt history) with a unique ``task_id``. A backend keeps each task in exactly one state:

``pending``   ready to run (``due_s`` reached);
``delayed``   waiting for its ``due_s`` (a retry backoff or a scheduled time);
``inflight``  leased by one consumer until its lease deadline (wall-clock, stored durably);
``succeeded`` finished, result stored;
``dead``      in the dead-letter queue, after its last attempt or a non-retryable error.

Guarantees (the contract test suite in ``tests/queue`` checks them against every backend):

1. **Visibility.** A task enqueued by any process, at any time, is leasable by every consumer,
   including consumers that started before it was enqueued.
2. **Exclusive leases.** While a lease is held and renewed before its deadline, no other consumer
   can lease the same task. Without crashes, each task is delivered exactly once.
3. **At-least-once on failure.** A lease whose deadline passes, or whose consumer is declared dead
   via ``recover(dead_consumers=…)``, returns the task to ``pending``; its next delivery carries
   an ``attempt`` number one higher (a crashed delivery counts as an attempt). A task is delivered
   more than once only when a consumer died or let its lease lapse.
4. **Terminal means terminal.** Once ``ack`` returned, the task never runs again, even if files
   were damaged or a stale lease is recovered later.
5. **Durability.** ``enqueue`` and ``ack`` survive SIGKILL of the caller once they return.
   With ``durable=True``, ``enqueue`` also survives power loss once it returns (many tasks are
   one durable batch), and an ``ack`` once ``flush`` returned; acks may be made durable in
   groups, but a task is never *reported* ``succeeded`` (by ``find``) before its ack is durable.
6. **Damage is local.** A corrupt record affects only itself: it never counts as a task, never
   hides another task and never crashes a reader. Writers move it to a quarantine place.
7. **Read-only readers.** ``stats`` and ``find`` never create or modify anything and work on a
   directory the caller cannot write.

Operations that take a :class:`Lease` raise :class:`LeaseLost` when the lease is no longer held.
Backends are safe to use from many processes; one instance is not shared between threads except
for ``renew`` running beside the task (backends document their own locking).
"""

from __future__ import annotations

from enum import StrEnum

from tracemind.errors import TraceMindError
from tracemind.values import Value

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from typing import Any, Protocol
else:
    # TaskQueue is a contract for the type checker; at run time it is a plain class, so that the
    # value classes below come without ``typing`` (~4 ms of every ``tm enqueue``).
    Protocol = object


class TaskStatus(StrEnum):
    PENDING = "pending"
    DELAYED = "delayed"
    INFLIGHT = "inflight"
    SUCCEEDED = "succeeded"
    DEAD = "dead"
    CANCELLED = "cancelled"


class LeaseLost(TraceMindError):
    """The lease expired and was recovered (or the task was acknowledged elsewhere)."""


class NewTask(Value):
    """A task to enqueue: its id, its JSON record, and when it becomes due (epoch seconds)."""

    __slots__ = ("due_s", "record", "task_id")

    def __init__(self, task_id: str, record: dict[str, Any], due_s: float) -> None:
        self.task_id = task_id
        self.record = record
        self.due_s = due_s


class Lease(Value):
    """One delivery of a task to one consumer. ``attempt`` is 1 for the first delivery.

    ``handle`` is backend-private state (the file backend keeps the lease's current file name
    there)."""

    __slots__ = ("attempt", "consumer", "deadline_s", "handle", "record", "task_id", "token")

    def __init__(
        self,
        task_id: str,
        attempt: int,
        consumer: str,
        token: str,
        deadline_s: float,
        record: dict[str, Any],
        handle: Any = None,
    ) -> None:
        self.task_id = task_id
        self.attempt = attempt
        self.consumer = consumer
        self.token = token
        self.deadline_s = deadline_s
        self.record = record
        self.handle = handle


class Failure(Value):
    """Why an attempt failed: a one-line error and, when there is one, the formatted traceback."""

    __slots__ = ("error", "traceback")

    def __init__(self, error: str, traceback: str | None = None) -> None:
        self.error = error
        self.traceback = traceback


class QueueStats(Value):
    __slots__ = ("damaged", "delayed", "inflight", "oldest_pending_age_s", "pending")

    def __init__(
        self,
        pending: int,
        delayed: int,
        inflight: int,
        oldest_pending_age_s: float | None,
        damaged: int = 0,
    ) -> None:
        self.pending = pending
        self.delayed = delayed
        self.inflight = inflight
        self.oldest_pending_age_s = oldest_pending_age_s
        self.damaged = damaged

    def to_dict(self) -> dict[str, Any]:
        return {
            "pending": self.pending,
            "delayed": self.delayed,
            "inflight": self.inflight,
            "oldest_pending_age_s": self.oldest_pending_age_s,
            "damaged": self.damaged,
        }


class TaskInfo(Value):
    """What ``find`` knows of one task; ``record`` is the task record (or the terminal record)."""

    __slots__ = ("attempts", "due_s", "finished_s", "record", "status", "task_id")

    def __init__(
        self,
        task_id: str,
        status: TaskStatus,
        attempts: int,
        record: dict[str, Any],
        due_s: float | None = None,
        finished_s: float | None = None,
    ) -> None:
        self.task_id = task_id
        self.status = status
        self.attempts = attempts
        self.record = record
        self.due_s = due_s
        self.finished_s = finished_s


class TaskQueue(Protocol):
    """A durable, multi-process task queue (see the module docstring for the guarantees)."""

    def enqueue(self, tasks: Sequence[NewTask]) -> None:
        """Store every task as one batch (one sync); each becomes leasable at its ``due_s``."""

    def lease(self, consumer: str, lease_s: float) -> Lease | None:
        """Take the oldest due task (of this consumer's share first, see :meth:`take_share`) for
        ``consumer`` until now + ``lease_s``; None when none is due."""

    def take_share(self, index: int, count: int) -> None:
        """A hint for this consumer's leases: it is number ``index`` of ``count`` consumers
        started together on this queue (a pool's workers). A backend whose consumers would
        otherwise race for the same entries may start each on its own share of them; none may
        leave a task unclaimed because it lies in another consumer's share."""

    def wait_for_work(self, timeout_s: float) -> None:
        """Block up to ``timeout_s``, returning early when a task may have become due (a hint:
        the caller leases again either way)."""

    def renew(self, lease: Lease, lease_s: float) -> None:
        """Push the lease deadline to now + ``lease_s``; raises LeaseLost if it was lost."""

    def ack(self, lease: Lease, result: dict[str, Any]) -> None:
        """Mark the task succeeded with ``result``; it never runs again. Durable against power
        loss (and reported succeeded) by the time ``flush`` returns, possibly sooner."""

    def flush(self) -> None:
        """Block until every ``ack`` made through this instance is durable and reported."""

    def retry(self, lease: Lease, failure: Failure, delay_s: float) -> None:
        """Record the failed attempt and make the task due again after ``delay_s``."""

    def dead_letter(self, lease: Lease, failure: Failure) -> None:
        """Record the failed attempt and move the task to the dead-letter queue."""

    def cancel_requested(self, task_id: str) -> bool:
        """Whether a cancel of the task was requested while it was in flight (a worker asks
        between steps; cheap)."""

    def cancel_leased(self, lease: Lease) -> None:
        """End the leased task as cancelled (terminal); raises LeaseLost if it was lost."""

    def recover(self, dead_consumers: Iterable[str] = ()) -> int:
        """Return expired leases, and every lease of the given consumer ids (or id prefixes), to
        pending — or to the DLQ when they used their last attempt. Returns how many moved."""

    def maintain(self) -> None:
        """Periodic upkeep by a process that serves the queue (a daemon or a pool), about once
        a second: bounded work that keeps readers cheap. Never needed for correctness."""

    def stats(self) -> QueueStats:
        """Exact counts by state, read-only. Cost: what changed since the last ``maintain``,
        not the depth of the queue (a backend may state a different bound)."""

    def has_waiting(self) -> bool:
        """Whether any task is pending or delayed, read-only; cheaper than ``stats``."""

    def held_by(self, consumer_prefix: str) -> int:
        """How many leases consumers whose id starts with ``consumer_prefix`` hold, read-only."""

    def find(self, task_id: str) -> TaskInfo | None:
        """Where the task is now (including succeeded and dead), read-only; None if unknown."""
