"""The JSON records the queue writes: a task, its attempt history, and its terminal entries."""

from __future__ import annotations

from typing import Any

from tracemind.queue.protocol import Failure

LOST_ATTEMPT = "lost: the worker died or its lease expired"


def new_record(
    *,
    task_id: str,
    flow: dict[str, Any],
    inputs: dict[str, Any],
    max_attempts: int,
    enqueued_at: float,
    idempotency_key: str | None = None,
    trigger: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A task record: ``flow`` is the flow snapshot (``FlowSnapshot.to_dict()``)."""
    return {
        "v": 1,
        "task_id": task_id,
        "flow_id": flow.get("flow", {}).get("id"),
        "flow": flow,
        "input": inputs,
        "max_attempts": max_attempts,
        "enqueued_at": enqueued_at,
        "idempotency_key": idempotency_key,
        "trigger": trigger,
        "history": [],
    }


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


def done_entry(
    record: dict[str, Any], attempt: int, token: str, result: dict[str, Any], now_s: float
) -> dict[str, Any]:
    """The terminal record of a succeeded task (the flow snapshot is dropped; its id is kept)."""
    entry = {key: value for key, value in record.items() if key != "flow"}
    entry.update(
        status="succeeded", attempts=attempt, lease_token=token, result=result, finished_at=now_s
    )
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
