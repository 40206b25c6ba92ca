"""How the Redis backend stores records: a task's hash as what ``find`` reports, records as
JSON text, times as integer milliseconds."""

from __future__ import annotations

import json

from tracemind.backend.redis.connection import dumps
from tracemind.queue.protocol import TaskInfo, TaskStatus
from tracemind.queue.records import DEAD_FIELDS, count_of, succeeded_entry

TYPE_CHECKING = False  # (on `tm enqueue`'s path: no `typing` at run time)
if TYPE_CHECKING:
    from typing import Any


def ms(epoch_s: float) -> int:
    """Epoch seconds as the integer milliseconds the scripts store."""
    return int(epoch_s * 1000)


def task_info(task_id: str, fields: dict[str, str], now_s: float) -> TaskInfo | None:
    """What ``find`` reports of a task's hash."""
    state = fields["state"]
    attempts = count_of(int(fields.get("attempts") or 0))
    finished_s = int(fields["finished_ms"]) / 1000 if fields.get("finished_ms") else None
    record = loads_object(fields.get("record"))
    if state == "succeeded":
        entry = succeeded_entry(record, loads_object(fields.get("done")))
        return TaskInfo(
            task_id, TaskStatus.SUCCEEDED, count_of(entry.get("attempts")), entry, None, finished_s
        )
    if state == "dead":
        entry = loads_object(fields.get("done"))
        return TaskInfo(
            task_id, TaskStatus.DEAD, count_of(entry.get("attempts")), entry, None, finished_s
        )
    if state == "cancelled":
        entry = {k: v for k, v in record.items() if k != "flow"}
        entry.update(status="cancelled", cancelled_at=finished_s)
        return TaskInfo(task_id, TaskStatus.CANCELLED, 0, entry, None, finished_s)
    if state == "inflight":
        return TaskInfo(task_id, TaskStatus.INFLIGHT, attempts, record)
    if state in ("waiting", "ready"):
        due_s = int(fields.get("due_ms") or 0) / 1000
        status = TaskStatus.PENDING if ms(due_s) <= ms(now_s) else TaskStatus.DELAYED
        return TaskInfo(task_id, status, attempts, record, due_s=due_s)
    return None  # damaged: never counts as a task


def requeued_record(entry: dict[str, Any]) -> dict[str, Any]:
    """A dead entry as a task record again (its history kept)."""
    return {k: v for k, v in entry.items() if k not in DEAD_FIELDS}


def encode_record(record: dict[str, Any], flows: dict[int, str]) -> str:
    """``record`` as JSON; a flow snapshot shared by a batch's records is encoded once."""
    flow = record.get("flow")
    if not isinstance(flow, dict):
        return dumps(record)
    if id(flow) not in flows:
        flows[id(flow)] = dumps(flow)
    rest = dumps({k: v for k, v in record.items() if k != "flow"})
    return rest[:-1] + ("," if rest != "{}" else "") + '"flow":' + flows[id(flow)] + "}"


def loads_object(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
