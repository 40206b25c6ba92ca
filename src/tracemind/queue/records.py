"""The JSON records the queue writes: a task, its attempt history, and its terminal entries."""

from __future__ import annotations

import json

from tracemind.queue.protocol import Failure, NewTask

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from tracemind.flows import FlowSnapshot
    from tracemind.submission import Submission

LOST_ATTEMPT = "lost: the worker died or its lease expired"
DEAD_FIELDS = frozenset({"status", "attempts", "error", "traceback", "dead_at", "lease_token"})
"""What :func:`dead_entry` adds to a task record (a requeue moves the entry back as it is)."""


RETRY_FIELDS = ("max_attempts", "base_ms", "factor", "jitter_ms")


def new_record(
    *,
    task_id: str,
    flow: dict[str, Any],
    inputs: dict[str, Any],
    max_attempts: int,
    enqueued_at: float,
    idempotency_key: str | None = None,
    trigger: dict[str, Any] | None = None,
    policy: dict[str, Any] | None = None,
    due_at: float | None = None,
) -> dict[str, Any]:
    """A task record: ``flow`` is the flow snapshot (``FlowSnapshot.to_dict()``); ``policy``
    is what :func:`task_policy` resolved at submit (a record without one is resolved from its
    flow by whoever runs it, see :func:`policy_of`); ``due_at`` is when it was first due, as
    submitted (epoch seconds; default ``enqueued_at``)."""
    record = {
        "v": 1,
        "task_id": task_id,
        "flow_id": flow.get("flow", {}).get("id"),
        "flow": flow,
        "input": inputs,
        "max_attempts": max_attempts,
        "enqueued_at": enqueued_at,
        "due_at": enqueued_at if due_at is None else due_at,
        "idempotency_key": idempotency_key,
        "trigger": trigger,
        "history": [],
    }
    if policy is not None:
        record["policy"] = policy
    return record


class FlowParts:
    """What the records of one flow share — its snapshot, its policy, its max attempts — made
    once for as long as the same flow object is submitted (nothing changes them), so that a
    submitter sending one task at a time builds them once, and its queue encodes them once
    (see the file queue's ``SharedJson``). Each submitter owns one; it holds the last flow."""

    __slots__ = ("_flow", "_parts")

    def __init__(self) -> None:
        self._flow: object = None
        self._parts: tuple[dict[str, Any], dict[str, Any], int] | None = None

    def of(self, flow: FlowSnapshot) -> tuple[dict[str, Any], dict[str, Any], int]:
        """(snapshot, policy, max attempts) of ``flow``'s records."""
        if self._flow is not flow or self._parts is None:
            self._parts = (
                flow.to_dict(),
                task_policy(flow.flow),
                int(flow.flow["retry"]["max_attempts"]),
            )
            self._flow = flow
        return self._parts


class TaskMaker:
    """Makes the tasks of one batch of submissions of ``flow`` at ``now_s``: every backend's
    submitter builds its records here, so a record means the same on every backend (the
    policy resolved at submit, the first due time). ``parts``: the submitter's
    :class:`FlowParts` (by default, parts of this batch's own)."""

    def __init__(self, flow: FlowSnapshot, now_s: float, parts: FlowParts | None = None) -> None:
        self.snapshot, self.policy, self.max_attempts = (parts or FlowParts()).of(flow)
        self.now_s = now_s

    def task(self, task_id: str, item: Submission) -> NewTask:
        """The task ``item`` makes under ``task_id``, due at its ``due_s`` (default: now)."""
        due_s = self.now_s if item.due_s is None else item.due_s
        record = new_record(
            task_id=task_id,
            flow=self.snapshot,
            inputs=item.inputs,
            max_attempts=self.max_attempts,
            enqueued_at=self.now_s,
            idempotency_key=item.idempotency_key,
            trigger=item.trigger,
            policy=self.policy,
            due_at=due_s,
        )
        return NewTask(task_id, record, due_s)


def task_policy(flow_section: dict[str, Any]) -> dict[str, Any]:
    """The retry and timeout policy of a task, resolved once, when it is submitted, from its
    validated flow (the ``flow`` section of a snapshot): ``{"retry": {max_attempts, base_ms,
    factor, jitter_ms}, "timeout_s": seconds or None}``. Workers apply the record's policy as
    it is, whatever version of tracemind they run."""
    retry = flow_section.get("retry")
    retry = retry if isinstance(retry, dict) else {}
    timeout_s = flow_section.get("timeout_s")
    return {
        "retry": {name: retry[name] for name in RETRY_FIELDS if name in retry},
        "timeout_s": timeout_s if isinstance(timeout_s, int | float) else None,
    }


def policy_of(record: dict[str, Any]) -> dict[str, Any]:
    """The policy a record carries; for a record written before records carried one (or with a
    damaged one), the policy of the flow snapshot it carries, resolved now."""
    policy = record.get("policy")
    if isinstance(policy, dict) and isinstance(policy.get("retry"), dict):
        return policy
    snapshot = record.get("flow")
    flow = snapshot.get("flow") if isinstance(snapshot, dict) else None
    return task_policy(flow if isinstance(flow, dict) else {})


def max_attempts_of(record: dict[str, Any]) -> int:
    """The record's ``max_attempts``; 1 when it is missing or not a positive integer (a record
    damaged that way is not retried, it goes to the DLQ where a person can look at it)."""
    value = record.get("max_attempts")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 1


def count_of(value: Any) -> int:
    """An attempt count read from a record: 0 unless it is a non-negative integer."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def with_failure(
    record: dict[str, Any], attempt: int, failure: Failure, now_s: float
) -> dict[str, Any]:
    """A copy of ``record`` whose history has one item per attempt up to ``attempt`` (attempts
    that left no trace — a killed worker — are filled in as lost)."""
    history = [h for h in record.get("history", []) if isinstance(h, dict)]
    seen = {h.get("attempt") for h in history}
    history += [
        {"attempt": n, "outcome": "lost", "error": LOST_ATTEMPT}
        for n in range(1, attempt)
        if n not in seen
    ]
    history.append(
        {
            "attempt": attempt,
            "outcome": "failed",
            "error": failure.error,
            "traceback": failure.traceback,
            "at": now_s,
        }
    )
    history.sort(key=lambda h: int(h.get("attempt", 0)))
    return {**record, "history": history}


def completion_entry(
    attempt: int, token: str, result: dict[str, Any], now_s: float
) -> dict[str, Any]:
    """The line an ack appends to the task's file: the outcome of its succeeded attempt."""
    return {
        "status": "succeeded",
        "attempts": attempt,
        "lease_token": token,
        "result": result,
        "finished_at": now_s,
    }


def parse_task_file(data: bytes) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(task record, completion or None) from a task file's bytes.

    The record is the first line; an ack appends the completion on a line of its own. A torn or
    damaged completion line counts as no completion (the attempt is then simply not finished);
    a damaged record raises ``ValueError``.
    """
    first, _, rest = data.partition(b"\n")
    record = json.loads(first)
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    if "dead_at" in record:  # a DLQ entry moved back into the queue by a requeue
        record = {k: v for k, v in record.items() if k not in DEAD_FIELDS}
    completion = None
    for line in rest.split(b"\n"):
        try:
            entry = json.loads(line) if line.strip() else None
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("status") == "succeeded":
            completion = entry
    return record, completion


def succeeded_entry(record: dict[str, Any], completion: dict[str, Any] | None) -> dict[str, Any]:
    """What readers see of a succeeded task: its record without the flow snapshot (the flow id
    is kept) merged with its completion."""
    entry = {key: value for key, value in record.items() if key != "flow"}
    entry.update(completion or {})
    return entry


def dead_entry(
    record: dict[str, Any], attempt: int, token: str, failure: Failure, now_s: float
) -> dict[str, Any]:
    """A DLQ entry: the task record (flow kept, so it can be requeued) plus why it died."""
    entry = with_failure(record, attempt, failure, now_s)
    entry.update(
        status="dead",
        attempts=attempt,
        lease_token=token,
        error=failure.error,
        traceback=failure.traceback,
        dead_at=now_s,
    )
    return entry
