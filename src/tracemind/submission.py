"""What a submission is and what it returns, for every backend: :class:`Submission` and
:class:`SubmitResult`.

A module of their own so that a backend's submitter (and ``tm enqueue`` on it) imports only
these two value classes, never the file backend's idempotency store that
:mod:`tracemind.submit` carries. :mod:`tracemind.submit` re-exports both.
"""

from __future__ import annotations

from tracemind.values import Value

TYPE_CHECKING = False  # (on `tm enqueue`'s path: no `typing` at run time)
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

    from tracemind.flows import FlowSnapshot


class SubmitResult(Value):
    """The task id a submission resolved to, and whether it was a duplicate (an idempotency key
    that named an existing task: nothing was enqueued)."""

    __slots__ = ("duplicate", "task_id")

    def __init__(self, task_id: str, duplicate: bool) -> None:
        self.task_id = task_id
        self.duplicate = duplicate

    def to_dict(self) -> dict[str, Any]:
        return {"task_id": self.task_id, "duplicate": self.duplicate}


class Submission(Value):
    """One task to submit: its input, optional idempotency key, optional trigger metadata, and
    when it becomes due (epoch seconds; None: now, the time of the submission)."""

    __slots__ = ("due_s", "idempotency_key", "inputs", "trigger")

    def __init__(
        self,
        inputs: dict[str, Any],
        idempotency_key: str | None = None,
        trigger: dict[str, Any] | None = None,
        due_s: float | None = None,
    ) -> None:
        self.inputs = inputs
        self.idempotency_key = idempotency_key
        self.trigger = trigger
        self.due_s = due_s


class SubmitsOne:
    """``submit`` (one task) for a submitter that has ``submit_many`` (a batch)."""

    def submit_many(
        self, flow: FlowSnapshot, submissions: Sequence[Submission]
    ) -> list[SubmitResult]:
        raise NotImplementedError

    def submit(
        self,
        flow: FlowSnapshot,
        inputs: dict[str, Any],
        *,
        idempotency_key: str | None = None,
        trigger: dict[str, Any] | None = None,
    ) -> SubmitResult:
        """One task, as a batch of one (see ``submit_many``)."""
        return self.submit_many(flow, [Submission(inputs, idempotency_key, trigger)])[0]
