"""Submitting flows: the one place that turns (flow, input, idempotency key) into queued tasks.

Idempotency rule: a key blocks a new submission while its task is pending, delayed, in flight,
or succeeded less than ``ttl_s`` ago; the key of a dead task does not.

How a keyed submission stays exact whatever happens to its process:

1. take the stripe locks of every key of the batch (held until step 4 is over);
2. decide each key from its record and the queue (O(1) per key, see :meth:`QueueSubmitter._blocks`);
3. write the new tasks into ``pending/``, their records durable, each name a link to the pack
   holding its record (as an unkeyed task is written);
4. point each key at its task once the task is named: a second name of the task's file in the
   store's ``keys/`` (a hard link: the key record), made durable; then ring the consumers'
   bell. A big batch makes its key records in a helper thread, each right behind its task's
   name, while the next tasks are named (the two run side by side on two CPUs).

So a keyed task costs the links of an unkeyed one and one more (no file, no rename). A
consumer runs a new keyed task only once its key record names it (one ``stat``: the two names
share a file), and while a submitter holds the key's lock it leaves the task for later (see
:meth:`~tracemind.backend.file.keys.IdempotencyStore.names`). A submitter killed anywhere
leaves nothing that runs without its key: a task written before its key record is an orphan
that the first consumer to find the lock free removes (and that a replay after a reboot does
not bring back), and a key that answers "duplicate" always names a task that exists. A paused
submitter keeps its locks: nobody decides by the clock that its claim is dead. Keyed tasks
that earlier versions left staged in ``staging/`` are settled by
:meth:`QueueSubmitter.settle_staged`.
"""

from __future__ import annotations

from tracemind.backend.file.keys import IdempotencyStore, KeyRecord
from tracemind.backend.file.pending import CHUNK_TASKS
from tracemind.clock import Clock, system_clock
from tracemind.errors import LockTimeout, TraceMindError
from tracemind.queue.names import new_task_id, parse_staged, staged_name
from tracemind.queue.protocol import NewTask, TaskStatus
from tracemind.queue.records import FlowParts, TaskMaker
from tracemind.submission import Submission, SubmitResult, SubmitsOne

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

    from tracemind.backend.file.queue import FileQueue
    from tracemind.flows import FlowSnapshot

__all__ = ["QueueSubmitter", "Submission", "SubmitResult"]

SETTLE_LOCK_WAIT_S = 0.05
"""How long settling waits for a key's lock: a held lock means a live submitter is at work."""


class QueueSubmitter(SubmitsOne):
    """Submits to a :class:`FileQueue`, deduplicating through an :class:`IdempotencyStore`."""

    def __init__(
        self,
        queue: FileQueue,
        keys: IdempotencyStore,
        *,
        ttl_s: float,
        clock: Clock = system_clock,
    ) -> None:
        self.queue = queue
        self.keys = keys
        self.ttl_s = ttl_s
        self.clock = clock
        self._flow_parts = FlowParts()

    def submit(
        self,
        flow: FlowSnapshot,
        inputs: dict[str, Any],
        *,
        idempotency_key: str | None = None,
        trigger: dict[str, Any] | None = None,
    ) -> SubmitResult:
        """One task, as a batch of one (see :meth:`submit_many`); without an idempotency key
        the short way (a process may submit one task at a time, many times over)."""
        if idempotency_key is not None:
            return super().submit(flow, inputs, idempotency_key=idempotency_key, trigger=trigger)
        now_s = self.clock()
        maker = TaskMaker(flow, now_s, self._flow_parts)
        task = maker.task(new_task_id(at_ms=int(now_s * 1000)), Submission(inputs, None, trigger))
        self.queue.enqueue([task])
        return SubmitResult(task.task_id, False)

    def submit_many(
        self, flow: FlowSnapshot, submissions: Sequence[Submission]
    ) -> list[SubmitResult]:
        """Submit every item as one durable batch; duplicates (also within the batch) are
        reported with the task id they resolve to and enqueue nothing. When this returns, every
        new task and key record is durable (with a durable queue)."""
        now_s = self.clock()
        keys = [s.idempotency_key for s in submissions if s.idempotency_key is not None]
        if not keys:
            new, results = self._new_tasks(flow, submissions, now_s, {})
            self.queue.enqueue(new)
            return results
        with self.keys.locked_many(keys):
            known = self._decide(keys, now_s)
            new, results = self._new_tasks(flow, submissions, now_s, known)
            keyed = [t for t in new if t.record["idempotency_key"] is not None]
            self._write_keyed(keyed)
        plain = [t for t in new if t.record["idempotency_key"] is None]
        if plain:
            self.queue.enqueue(plain)  # no key: at-least-once, like any unkeyed submission
        if keyed:  # (after the locks: a batch's census pass may wait for the clock to tick)
            self.queue.keep_census(len(new))
        return results

    def _decide(self, keys: list[str], now_s: float) -> dict[str, str]:
        """key → the task id it resolves to, for each key that blocks a new submission."""
        blocking: dict[str, str] = {}
        for key in dict.fromkeys(keys):
            record, present = self.keys.lookup(key)
            if record is None:
                if present:
                    self.keys.quarantine_damaged(key)
            elif self._blocks(record, now_s):
                blocking[key] = record.task_id
        return blocking

    def _new_tasks(
        self,
        flow: FlowSnapshot,
        submissions: Sequence[Submission],
        now_s: float,
        known: dict[str, str],
    ) -> tuple[list[NewTask], list[SubmitResult]]:
        """The tasks to create and every item's result; ``known`` maps keys to the task they
        resolve to and gains the keys of new tasks (a key repeated in a batch is a duplicate)."""
        maker = TaskMaker(flow, now_s, self._flow_parts)
        results: list[SubmitResult] = []
        new: list[NewTask] = []
        now_ms = int(now_s * 1000)
        for index, item in enumerate(submissions):
            key = item.idempotency_key
            if key is not None and key in known:
                results.append(SubmitResult(known[key], True))
                continue
            # A big batch's ids advance a millisecond every CHUNK_TASKS tasks: its tasks then
            # fill buckets of pending/ of bounded size (queue.pending.bucket_of), in order.
            task_id = new_task_id(at_ms=now_ms + index // CHUNK_TASKS)
            if key is not None:
                known[key] = task_id
            new.append(maker.task(task_id, item))
            results.append(SubmitResult(task_id, False))
        return new, results

    def _write_keyed(self, keyed: list[NewTask]) -> None:
        """Steps 3 and 4 of the module's protocol, for the new keyed tasks of a batch (call
        holding their keys' locks): each key record is made once its task is named, for a big
        batch while the next tasks are being named (see
        :meth:`~tracemind.backend.file.keys.IdempotencyStore.linking`). A failure withdraws the
        tasks whose keys were not written (a task whose key was written stays: a retry is told
        it exists)."""
        keys = [t.record["idempotency_key"] for t in keyed]
        digests = [self.keys.digest(key) for key in keys]
        try:
            with self.keys.linking(len(keys)) as link:
                self.queue.enqueue_keyed(
                    keyed, digests, on_linked=lambda index, path: link(keys[index], path)
                )
        except BaseException:
            self.queue.withdraw(
                path
                for key, path, task in zip(keys, self.queue.keyed_paths(keyed), keyed, strict=True)
                if self.keys.owner(key) != task.task_id
            )
            raise
        self.queue.ring()

    def _blocks(self, record: KeyRecord, now_s: float) -> bool:
        """Whether ``record``'s task still holds its key (call holding the key's lock).

        O(1): a task with no terminal record is live (pending, delayed or in flight: under the
        key's lock nothing else can have made the record; a task that an earlier version's
        submitter staged and died before publishing is published now)."""
        if record.due_ms is None:
            return self._blocks_legacy(record, now_s)
        if self.queue.is_staged(staged_name(record.task_id, record.due_ms, record.stripe)):
            self._roll_forward(record)
            return True
        info = self.queue.finished(record.task_id)
        if info is None:
            return True
        if info.status is TaskStatus.SUCCEEDED:
            return info.finished_s is None or now_s - info.finished_s < self.ttl_s
        return False

    def _blocks_legacy(self, record: KeyRecord, now_s: float) -> bool:
        """A record written before tasks were staged: the task blocks only if it can be found."""
        info = self.queue.find(record.task_id)
        if info is None:
            return False
        if info.status is TaskStatus.SUCCEEDED:
            return info.finished_s is None or now_s - info.finished_s < self.ttl_s
        return info.status is not TaskStatus.DEAD

    def _roll_forward(self, record: KeyRecord) -> None:
        assert record.due_ms is not None
        if self.queue.publish([staged_name(record.task_id, record.due_ms, record.stripe)]):
            _log().warning(
                "published a task whose submitter died after claiming its key",
                task_id=record.task_id,
            )

    def settle_staged(self) -> int:
        """Finish what dead submitters left in ``staging/``: publish each staged task its key
        points at, remove the others (their submitter died before writing the key, maybe while
        writing the task itself). A task whose key lock is held is left to its live submitter.
        Returns how many were settled."""
        settled = 0
        busy: set[str] = set()  # stripes a live submitter holds: not waited for twice a pass
        for name in self.queue.staged():
            parsed = parse_staged(name)
            stripe = None if parsed is None else parsed[0]
            if stripe in busy:
                continue
            try:
                if stripe is None:  # staged by an earlier version: written whole, then renamed
                    settled += self._settle_unstriped(name)
                    continue
                with self.keys.locked_stripes([stripe], timeout_s=SETTLE_LOCK_WAIT_S):
                    record = self.queue.staged_record(name)
                    settled += self._settle_one(name, None if record is None else record)
            except LockTimeout:
                if stripe is not None:
                    busy.add(stripe)
            except TraceMindError as exc:
                _log().error("staged task not settled", task=str(name), error=str(exc))
        return settled

    def _settle_unstriped(self, name: str) -> int:
        record = self.queue.staged_record(name)
        key = None if record is None else record.get("idempotency_key")
        if not isinstance(key, str):
            return 1 if self.queue.quarantine_staged(name, "unreadable staged task") else 0
        with self.keys.locked(key, timeout_s=SETTLE_LOCK_WAIT_S):
            return self._settle_one(name, record)

    def _settle_one(self, name: str, staged: dict[str, Any] | None) -> int:
        """Settle one staged task whose record is ``staged`` (call holding its key's lock).

        A staged record that does not parse is torn: its submitter died while writing it, so no
        key record points at it (key records are written only once every staged task is whole,
        and synced, with a durable queue)."""
        key = None if staged is None else staged.get("idempotency_key")
        record = self.keys.get(key) if isinstance(key, str) else None
        if record is not None and staged_name(record.task_id, record.due_ms, record.stripe) == name:
            return 1 if self.queue.publish([name]) else 0
        self.queue.unstage([name])
        _log().warning("removed a task staged by a submitter that died before its key", task=name)
        return 1


def _log() -> Any:
    from tracemind.log import get_logger  # not at import: keeps structlog off `tm enqueue`

    return get_logger("tracemind.submit")
