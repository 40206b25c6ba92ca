"""What the client reports: one task (:class:`TaskInfo`) and the queue's counts
(:class:`QueueCounts`). Their ``to_dict`` forms are what ``tm task show --json`` and
``tm queue stats --json`` print."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tracemind.clock import iso_utc
from tracemind.queue.protocol import TaskInfo as QueueTaskInfo
from tracemind.queue.protocol import TaskStatus

TERMINAL = frozenset({TaskStatus.SUCCEEDED, TaskStatus.DEAD, TaskStatus.CANCELLED})
"""Statuses a task never leaves on its own (``wait`` returns once every task has one)."""


@dataclass(frozen=True)
class TaskInfo:
    """One task as the queue knows it now.

    ``status`` is one of :class:`~tracemind.TaskStatus`: ``pending`` (due, waiting for a
    worker), ``delayed`` (until ``due_s``: a ``delay_s``/``at`` or a retry's backoff),
    ``inflight`` (a worker holds it), ``succeeded`` (``result`` holds the final state) or
    ``dead`` (in the dead-letter queue; ``error`` says why) or ``cancelled`` (``tm task cancel``:
    it will not run). ``damaged`` is true when the task's
    only record is torn or empty: such a copy never runs. Times are epoch seconds."""

    task_id: str
    status: TaskStatus
    flow_id: str | None
    attempts: int
    enqueued_at_s: float | None
    due_s: float | None
    finished_s: float | None
    result: dict[str, Any] | None
    error: str | None
    damaged: bool = False
    view: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def finished(self) -> bool:
        """Whether the status is terminal (the task will not run again unless requeued)."""
        return self.status in TERMINAL

    def to_dict(self) -> dict[str, Any]:
        """The ``tm task show --json`` document (times as ISO-8601 UTC, with its history)."""
        return dict(self.view)

    @classmethod
    def of(cls, info: QueueTaskInfo) -> TaskInfo:
        view = describe(info)
        record = info.record
        result = record.get("result") if info.status is TaskStatus.SUCCEEDED else None
        return cls(
            task_id=info.task_id,
            status=info.status,
            flow_id=_str_or_none(record.get("flow_id")),
            attempts=info.attempts,
            enqueued_at_s=_number(record.get("enqueued_at")),
            due_s=info.due_s if info.status is TaskStatus.DELAYED else None,
            finished_s=info.finished_s,
            result=result if isinstance(result, dict) else None,
            error=_str_or_none(view.get("error")),
            damaged=bool(view.get("damaged")),
            view=view,
        )


def describe(info: QueueTaskInfo) -> dict[str, Any]:
    """The ``tm task show --json`` document of one task."""
    record = info.record
    history = record.get("history") or []
    view: dict[str, Any] = {
        "task_id": info.task_id,
        "flow_id": record.get("flow_id"),
        "status": info.status.value,
        "attempts": info.attempts,
        "enqueued_at": iso_utc(_number(record.get("enqueued_at"))),
        "finished_at": iso_utc(info.finished_s),
        "idempotency_key": record.get("idempotency_key"),
        "trigger": record.get("trigger"),
        "history": history,
    }
    if info.status == "succeeded":
        view["result"] = record.get("result")
    elif history or record.get("error"):
        view["error"] = record.get("error") or history[-1].get("error")
    if info.due_s is not None and info.status == "delayed":
        view["due_at"] = iso_utc(info.due_s)
    if not record:
        view["damaged"] = True
        if info.status != "succeeded":  # a done record still fences its task: it succeeded
            # A damaged copy never runs (the next consumer quarantines it): not pending.
            view["status"] = "damaged"
            view["found_as"] = info.status.value
    return view


@dataclass(frozen=True)
class QueueCounts:
    """Tasks by state, exact (``damaged``: records that will never run, awaiting quarantine);
    ``oldest_pending_age_s`` is how long the oldest due task has waited (None: none waits)."""

    pending: int
    delayed: int
    inflight: int
    dead: int
    damaged: int
    oldest_pending_age_s: float | None

    def to_dict(self) -> dict[str, Any]:
        """The ``tm queue stats --json`` document."""
        return {
            "pending": self.pending,
            "delayed": self.delayed,
            "inflight": self.inflight,
            "dead": self.dead,
            "damaged": self.damaged,
            "oldest_pending_age_s": self.oldest_pending_age_s,
        }


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None
