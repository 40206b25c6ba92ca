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
    ``get``/``count``, ``Registry.live``, ``problems``, ``finished``, ``newest``,
    ``waiting_since``, ``unreadable_records`` and a :class:`FinishWatch` create or change
    nothing.
13. **Finishing wakes a watcher.** A :class:`FinishWatch` made before a look at the tasks
    returns from ``wait`` at the latest :data:`FINISH_RECHECK_S` after one of its tasks
    finished (by any process), so that a waiter that looks again after each ``wait`` never
    misses a finish and never waits much longer than it took. It may return early for no
    reason (the caller looks again).
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections import Counter
    from collections.abc import Collection, Sequence
    from typing import Any, Protocol

    from tracemind.backend.location import Location
    from tracemind.flows import FlowSnapshot
    from tracemind.queue.protocol import QueueStats, TaskInfo, TaskQueue, TaskStatus
    from tracemind.submission import Submission, SubmitResult
else:
    Protocol = object  # (a contract for the type checker; `tm enqueue` imports no `typing`)

FINISH_RECHECK_S = 1.0
"""Longest a :class:`FinishWatch` may sleep past a finish (guarantee 13)."""


class FinishWatch(Protocol):
    """Wakes a waiter when one of some tasks may have finished (guarantee 13)."""

    def wait(self, timeout_s: float) -> None:
        """Block until one of the tasks may have finished, or ``timeout_s`` passed."""

    def close(self) -> None:
        """Release what the watch holds (descriptors); idempotent."""

    def __enter__(self) -> FinishWatch: ...

    def __exit__(self, *exc_info: object) -> None: ...


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
        ``dead_at``), newest first; damaged entries are skipped. Read-only. With ``limit``, at
        most ``limit`` entries are read (a backend may pick them by task id, which grows with
        the task's creation time, rather than by ``dead_at``)."""

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
        :func:`tracemind.backend.registration.registration`), stamping its heartbeat with the
        backend's clock; works on a location nothing else was written to yet."""

    def deregister(self, instance_id: str) -> None:
        """Remove a registration (a clean exit); absent is fine."""

    def live(self, now_s: float | None = None) -> list[dict[str, Any]]:
        """Every registration whose heartbeat is at most the stale limit
        (:data:`tracemind.backend.registration.STALE_S`) old at ``now_s`` (default: the backend's
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

    def prepare(self) -> int:
        """Make the location ready to be served (create, migrate); idempotent, crash-safe.
        Returns how many records it moved from an earlier layout (0 when none). Raises
        :class:`~tracemind.errors.QueueError` (one line naming what) when this process cannot
        write the location, :class:`~tracemind.errors.UsageError` for a bad retention setting:
        a serving process calls it before it starts anything."""

    def maintain(self) -> None:
        """Upkeep by a serving process, about once a second: bounded work (settle what dead
        submitters left, refresh counts, a slice of retention). Never needed for correctness."""

    def prune(
        self, *, now_s: float | None = None, dry_run: bool = False, budget: int = 10_000
    ) -> Counter[str]:
        """Remove (or with ``dry_run`` only count) up to ``budget`` records expired at ``now_s``
        (default: the backend's clock); counts by kind: ``results``, ``keys``, ``dlq_audit``,
        and any kind of the backend's own (guarantee 10)."""

    def pruned(self) -> Counter[str]:
        """Records :meth:`maintain` removed through this object since it was opened, by kind
        (what a serving process reports as a metric)."""

    def problems(self) -> list[str]:
        """Why this process cannot serve the location right now (one line each); empty when it
        can. Read-only: what ``/readyz`` reports."""

    def unreadable_records(self) -> tuple[int, list[dict[str, Any]]]:
        """Records that some process reported it could not read (a permission an operator must
        fix, never damage) and that are still there: how many, and the first few (``record``,
        ``error``, ``uid``, ``fix``, ``at``). Read-only; ``(0, [])`` for a backend where no
        record can be unreadable to one process only."""

    def finished(self, task_id: str) -> TaskInfo | None:
        """The task once it is finished (succeeded, dead or cancelled), else None (waiting, in
        flight, or unknown). Cheap: no search. Read-only."""

    def watch_finished(self, task_ids: Collection[str]) -> FinishWatch:
        """A watch that wakes when one of ``task_ids`` may have finished (guarantee 13); make
        it before looking at the tasks. Read-only."""

    def newest(
        self, statuses: Collection[TaskStatus], limit: int, *, flow_id: str | None = None
    ) -> list[TaskInfo]:
        """Up to ``limit`` tasks in ``statuses`` (of ``flow_id`` when given), newest first by
        enqueue time. Read-only; the cost follows ``limit``, not the depth of the queue."""

    def waiting_since(self, epoch_s: float) -> int:
        """Tasks enqueued at or after ``epoch_s`` and never delivered yet. Read-only."""

    def close(self) -> None:
        """Release connections and descriptors; the object is unusable afterwards."""
