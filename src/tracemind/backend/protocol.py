"""The backend contract: everything a location holds, behind one object.

A :class:`Backend` is opened from a :class:`~tracemind.backend.location.Location` by
:func:`tracemind.backend.open_backend`. It bundles the stores of one queue and the operations
that span them; the CLI, the daemon, the workers, the status server, the triggers and the client
talk only to this contract, never to a backend's storage.

Guarantees, beyond those of the task queue (:mod:`tracemind.queue.protocol`, guarantees 1-7),
each checked against every backend by the parametrized contract suite in ``tests/backend``:

8.  **Idempotency keys.** :meth:`Submitter.submit_many` resolves each idempotency key to exactly
    one task while that task is pending, delayed, in flight, or succeeded less than the key's
    TTL ago; concurrent submitters of one key (threads, processes, hosts) agree on that task,
    and a submitter killed at any instant leaves either no task and no key or both. The key of a
    dead or cancelled task does not block a new submission.
9.  **Dead letters.** A dead task is listed, shown and counted until it is requeued or purged.
    :meth:`DeadLetters.requeue` makes it pending again (same id and input, its history kept,
    its attempts counted from 1 again: a person decided it deserves another full try) and
    :meth:`DeadLetters.purge` removes it with its idempotency key; each succeeds for exactly one
    caller however many run at once, and neither can run the task twice.
10. **Retention.** :meth:`Backend.prune` removes a succeeded record only once its TTL passed,
    never a record that can still be run or recovered, and never a dead letter; a pruned
    task never runs again. Interruptible at any instant, safe to run from many processes.
11. **Registry.** A registration is visible to every process that opens the same location
    until it is deregistered or its heartbeat is older than the stale limit.
12. **Readers never write.** ``stats``, ``counts``, ``find``, ``DeadLetters.newest_first``/
    ``get``/``count``, ``Registry.live`` and ``problems`` create or change nothing.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections import Counter
    from collections.abc import Sequence
    from typing import Any, Protocol

    from tracemind.backend.location import Location
    from tracemind.flows import FlowSnapshot
    from tracemind.queue.protocol import QueueStats, TaskQueue
    from tracemind.submit import Submission, SubmitResult
else:
    Protocol = object  # (a contract for the type checker; `tm enqueue` imports no `typing`)


class Submitter(Protocol):
    """Turns (flow, inputs, idempotency key) into queued tasks (guarantee 8)."""

    def submit(
        self,
        flow: FlowSnapshot,
        inputs: dict[str, Any],
        *,
        idempotency_key: str | None = None,
        trigger: dict[str, Any] | None = None,
    ) -> SubmitResult:
        """One task; see :meth:`submit_many`."""

    def submit_many(
        self, flow: FlowSnapshot, submissions: Sequence[Submission]
    ) -> list[SubmitResult]:
        """Every item as one batch; a duplicate (also within the batch) is reported with the
        task id its key resolves to and enqueues nothing. Durable when this returns."""


class DeadLetters(Protocol):
    """The dead-letter queue of one location (guarantee 9)."""

    def newest_first(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Entries (task record + ``attempts``, ``error``, ``traceback``, ``history``,
        ``dead_at``), newest first; damaged entries are skipped. Read-only."""

    def get(self, task_id: str) -> dict[str, Any] | None:
        """The entry, or None when there is none (or it is damaged). Read-only."""

    def count(self) -> int:
        """How many entries, read-only; O(entries) at most, never parsing them all."""

    def requeue(self, task_id: str) -> bool:
        """Make the dead task pending again; False when no such entry (or another caller won)."""

    def purge(self, task_id: str) -> bool:
        """Remove the entry and its idempotency key for good; False when no such entry."""

    def quarantine_damaged(self) -> int:
        """Move damaged entries aside (a writer's chore); how many moved."""


class Registry(Protocol):
    """Who serves the queue: every daemon and pool, with a heartbeat (guarantee 11)."""

    def register(self, entry: dict[str, Any]) -> None:
        """Write or refresh ``entry`` (``instance_id`` and the fields of
        :func:`tracemind.queue.registry.registration`), stamping its heartbeat with the
        backend's clock; works on a location nothing else was written to yet."""

    def deregister(self, instance_id: str) -> None:
        """Remove a registration (a clean exit); absent is fine."""

    def live(self, now_s: float | None = None) -> list[dict[str, Any]]:
        """Every registration whose heartbeat is at most the stale limit
        (:data:`tracemind.queue.registry.STALE_S`) old at ``now_s`` (default: the backend's
        clock), each with ``heartbeat_age_s``, oldest registration first (by ``started_at``,
        then instance id). Read-only."""


class Backend(Protocol):
    """One location's queue, dead letters, idempotency keys, retention and registry."""

    @property
    def location(self) -> Location:
        """Where the data is."""

    @property
    def queue(self) -> TaskQueue:
        """The task queue (guarantees 1-7)."""

    @property
    def dead_letters(self) -> DeadLetters:
        """The dead-letter queue."""

    @property
    def registry(self) -> Registry:
        """Who serves the queue."""

    def submitter(self, ttl_s: float) -> Submitter:
        """A submitter whose idempotency keys block for ``ttl_s`` after their task succeeded."""

    def counts(self) -> tuple[QueueStats, int, int]:
        """``(queue stats, dead letters, damaged dead letters)`` in one read. Read-only."""

    def cancel(self, task_id: str) -> str:
        """Cancel a task: ``"cancelled"`` (it was waiting: it never runs), ``"requested"`` (in
        flight: it stops before its next step), or the terminal status it already had
        (``succeeded``/``dead``/``cancelled``). ``NotFound`` for an unknown id."""

    def prepare(self) -> None:
        """Make the location ready to be served (create, migrate); idempotent, crash-safe."""

    def maintain(self) -> None:
        """Upkeep by a serving process, about once a second: bounded work (settle what dead
        submitters left, refresh counts, a slice of retention). Never needed for correctness."""

    def prune(
        self, *, now_s: float | None = None, dry_run: bool = False, budget: int = 10_000
    ) -> Counter[str]:
        """Remove (or with ``dry_run`` only count) up to ``budget`` records expired at ``now_s``
        (default: the backend's clock); counts by kind: ``results``, ``keys``, ``dlq_audit``,
        and any kind of the backend's own (guarantee 10)."""

    def problems(self) -> list[str]:
        """Why this process cannot serve the location right now (one line each); empty when it
        can. Read-only: what ``/readyz`` reports."""

    def close(self) -> None:
        """Release connections and descriptors; the object is unusable afterwards."""
