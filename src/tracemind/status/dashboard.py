"""What the dashboard page (``GET /``) reads every 2 s: ``GET /dashboard.json``, the status
document (:func:`tracemind.daemon.status_doc.status_document`, every key of ``/status``) plus a
``dashboard`` section built here.

Contract of the ``dashboard`` section: ids, flow ids, counts, times, the first line of errors
(at most :data:`~tracemind.worker.activity.ERROR_LINE_MAX_CHARS` characters) — never a task's
input, result or traceback, and the backend location with any password replaced by ``***``.
Its cost is bounded whatever the size of the queue: at most :data:`DLQ_SCAN_MAX` dead letters
are read (``truncated`` says when there were more) and :data:`WAITING_LISTED` waiting tasks.
"""

from __future__ import annotations

import os
import time
from typing import Any

from tracemind.backend.protocol import Backend
from tracemind.clock import iso_utc
from tracemind.daemon.state import StateDir
from tracemind.daemon.status_doc import status_document
from tracemind.worker.activity import error_line, short_id

DLQ_SCAN_MAX = 5000
DEAD_LETTERS_LISTED = 20
WAITING_LISTED = 20


def dashboard_document(state: StateDir, backend: Backend, *, actions: bool) -> dict[str, Any]:
    """The status document plus the ``dashboard`` section (see the module docstring);
    ``actions`` says whether the page may offer requeue, purge and cancel (and so lists the
    waiting tasks it may cancel)."""
    doc = status_document(state, backend)
    doc["dashboard"] = {
        "generated_at": iso_utc(time.time()),
        "location": backend.location.redacted(),
        "volume": volume(backend),
        "dead_letters": dead_letters(backend),
        "waiting": waiting_tasks(backend) if actions else [],
        "actions": actions,
    }
    return doc


def volume(backend: Backend) -> dict[str, Any] | None:
    """Free and total bytes of the file system holding the queue (None when unknown, or when
    the queue is not on a local file system)."""
    if not backend.location.is_file:
        return None
    try:
        stats = os.statvfs(backend.location.file_dirs()[0])
    except OSError:
        return None
    return {
        "free_bytes": stats.f_bavail * stats.f_frsize,
        "total_bytes": stats.f_blocks * stats.f_frsize,
    }


def dead_letters(backend: Backend) -> dict[str, Any]:
    """Dead letters by flow id (most first) and the newest :data:`DEAD_LETTERS_LISTED`, from
    the newest :data:`DLQ_SCAN_MAX` at most (``truncated`` when there are more)."""
    seen = backend.dead_letters.newest_first(DLQ_SCAN_MAX + 1)
    truncated = len(seen) > DLQ_SCAN_MAX
    seen = seen[:DLQ_SCAN_MAX]
    by_flow: dict[str, int] = {}
    for entry in seen:
        flow_id = short_id(entry.get("flow_id")) or ""
        by_flow[flow_id] = by_flow.get(flow_id, 0) + 1
    return {
        "by_flow": [
            {"flow_id": flow_id, "count": count}
            for flow_id, count in sorted(by_flow.items(), key=lambda item: (-item[1], item[0]))
        ],
        "newest": [_dead_letter(entry) for entry in seen[:DEAD_LETTERS_LISTED]],
        "truncated": truncated,
    }


def _dead_at(entry: dict[str, Any]) -> float:
    value = entry.get("dead_at")
    return float(value) if isinstance(value, int | float) else 0.0


def _dead_letter(entry: dict[str, Any]) -> dict[str, Any]:
    attempts = entry.get("attempts")
    return {
        "task_id": str(entry.get("task_id")),
        "flow_id": short_id(entry.get("flow_id")),
        "attempts": attempts if isinstance(attempts, int) else None,
        "dead_at": iso_utc(_dead_at(entry) or None),
        "error": error_line(entry.get("error")),
    }


def waiting_tasks(backend: Backend) -> list[dict[str, Any]]:
    """The newest :data:`WAITING_LISTED` pending or delayed tasks (ids and times only)."""
    from tracemind.client import Client

    tasks = Client(backend.location).list_tasks(["pending", "delayed"], limit=WAITING_LISTED)
    return [
        {
            "task_id": task.task_id,
            "flow_id": short_id(task.flow_id),
            "status": task.status.value,
            "enqueued_at": iso_utc(task.enqueued_at_s),
        }
        for task in tasks
    ]
