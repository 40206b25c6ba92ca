"""Submitting flows: the one place that turns (flow, input, idempotency key) into queued tasks.

Idempotency rule: a key blocks a new submission while its task is pending, delayed, in flight,
or succeeded less than ``ttl_s`` ago; the key of a dead task (or of a task that no longer exists)
does not. A key whose task is not visible yet but was claimed less than
:data:`IN_PROGRESS_GRACE_S` ago counts as in progress: another submitter is between writing the
key and the task. Keys are checked and written under the key's cross-process lock.
"""

from __future__ import annotations

import contextlib

from tracemind.clock import Clock, system_clock
from tracemind.errors import TraceMindError
from tracemind.idempotency import IdempotencyStore, KeyRecord
from tracemind.queue.names import new_task_id
from tracemind.queue.protocol import NewTask, TaskStatus
from tracemind.queue.records import new_record
from tracemind.values import Value

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

    from tracemind.flows import FlowSnapshot
    from tracemind.queue.protocol import TaskQueue

IN_PROGRESS_GRACE_S = 60.0
_LIVE = frozenset({TaskStatus.PENDING, TaskStatus.DELAYED, TaskStatus.INFLIGHT})


class SubmitResult(Value):
    __slots__ = ("duplicate", "task_id")

    def __init__(self, task_id: str, duplicate: bool) -> None:
        self.task_id = task_id
        self.duplicate = duplicate

    def to_dict(self) -> dict[str, Any]:
        return {"task_id": self.task_id, "duplicate": self.duplicate}


class Submission(Value):
    """One task to submit: its input, optional idempotency key, optional trigger metadata."""

    __slots__ = ("idempotency_key", "inputs", "trigger")

    def __init__(
        self,
        inputs: dict[str, Any],
        idempotency_key: str | None = None,
        trigger: dict[str, Any] | None = None,
    ) -> None:
        self.inputs = inputs
        self.idempotency_key = idempotency_key
        self.trigger = trigger


class QueueSubmitter:
    """Submits to a :class:`TaskQueue`, deduplicating through an :class:`IdempotencyStore`."""

    def __init__(
        self,
        queue: TaskQueue,
        keys: IdempotencyStore,
        *,
        ttl_s: float,
        clock: Clock = system_clock,
    ) -> None:
        self.queue = queue
        self.keys = keys
        self.ttl_s = ttl_s
        self.clock = clock

    def submit(
        self,
        flow: FlowSnapshot,
        inputs: dict[str, Any],
        *,
        idempotency_key: str | None = None,
        trigger: dict[str, Any] | None = None,
    ) -> SubmitResult:
        return self.submit_many(flow, [Submission(inputs, idempotency_key, trigger)])[0]

    def submit_many(
        self, flow: FlowSnapshot, submissions: Sequence[Submission]
    ) -> list[SubmitResult]:
        """Submit every item as one durable batch; duplicates (also within the batch) are
        reported with the task id they resolve to and enqueue nothing."""
        now_s = self.clock()
        snapshot = flow.to_dict()
        max_attempts = int(flow.flow["retry"]["max_attempts"])
        results: list[SubmitResult] = []
        new: list[NewTask] = []
        in_batch: dict[str, str] = {}
        for item in submissions:
            key = item.idempotency_key
            if key is not None and key in in_batch:
                results.append(SubmitResult(in_batch[key], True))
                continue
            task_id = new_task_id(now_s)
            if key is not None:
                existing = self._claim_key(key, task_id, now_s, batch=len(submissions) > 1)
                if existing is not None:
                    results.append(SubmitResult(existing, True))
                    continue
                in_batch[key] = task_id
            record = new_record(
                task_id=task_id,
                flow=snapshot,
                inputs=item.inputs,
                max_attempts=max_attempts,
                enqueued_at=now_s,
                idempotency_key=key,
                trigger=item.trigger,
            )
            new.append(NewTask(task_id, record, now_s))
            results.append(SubmitResult(task_id, False))
        try:
            self.queue.enqueue(new)
        except BaseException:
            # Keys must not point at tasks that were never enqueued: a retry would be refused
            # as a "duplicate" of nothing for IN_PROGRESS_GRACE_S.
            for key, task_id in in_batch.items():
                with contextlib.suppress(TraceMindError, OSError):
                    self.keys.release(key, task_id)
            raise
        return results

    def _claim_key(self, key: str, task_id: str, now_s: float, *, batch: bool) -> str | None:
        """Point ``key`` at ``task_id`` unless it already blocks; returns the blocking task id."""
        with self.keys.locked(key):
            existing = self.keys.get(key)
            if existing is None:
                self.keys.quarantine_damaged(key)
            elif self._blocks(existing, now_s):
                return existing.task_id
            # In a batch the key records are made durable by the batch's single sync.
            self.keys.put(key, task_id, now_s, durable=None if not batch else False)
        return None

    def _blocks(self, record: KeyRecord, now_s: float) -> bool:
        info = self.queue.find(record.task_id)
        if info is None:
            return now_s - record.created_at < IN_PROGRESS_GRACE_S
        if info.status in _LIVE:
            return True
        if info.status is TaskStatus.SUCCEEDED:
            return info.finished_s is None or now_s - info.finished_s < self.ttl_s
        return False
