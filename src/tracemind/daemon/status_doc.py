"""The status document (``tm daemon ps --json`` and ``GET /status``), read-only.

It is computed the same way from either side of a container boundary: liveness from the state
dir's lock and heartbeat, counts from the backend of the queue's location. ``pid_verified`` says whether the
recorded PID is proven, from here, to be the process holding the daemon lock (None when no
process holds it); when it is not, ``pid_note`` says what differs (another PID namespace, a
reused PID, a daemon.json that names a process not holding the lock). Bodies hold counts and states only —
never task inputs, results or secrets.

``activity`` is what the daemon's workers did lately, from its memory (empty after a restart,
``since`` says from when; empty too while no daemon runs): succeeded and failed attempts per
minute over the last hour and the last failures (ids, attempt, time, the error's first line).
Each ``cluster`` member also says since when it runs (``uptime_s``) and what its busy workers
run (``running``: task id, flow id, step, ``elapsed_s``).

While the backend's server cannot be reached the document is still made from the state dir:
``queue_error`` holds the error line (None otherwise), the counts are zeros, ``cluster`` is
empty, and ``ready`` is false with that line as ``reason``.
"""

from __future__ import annotations

import os
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from tracemind.daemon.identity import held_by, verify_daemon
from tracemind.daemon.recorded import recorded_location
from tracemind.daemon.state import StateDir, liveness
from tracemind.errors import QueueUnavailable
from tracemind.worker.activity import empty_activity

if TYPE_CHECKING:
    from tracemind.backend.location import Location
    from tracemind.backend.protocol import Backend


def location_for(state: StateDir, explicit: Location | None) -> Location | None:
    """The location to count: the caller's, else the one the daemon recorded (a file location
    only when its queue directory is visible here)."""
    if explicit is not None:
        return explicit
    recorded = recorded_location(state.meta() or {})
    if recorded is not None and recorded.is_file and not os.path.isdir(recorded.file_dirs()[0]):
        return None
    return recorded


def problem_reason(unreadable: int) -> str | None:
    """The readiness reason while records are unreadable (None when there is none)."""
    if not unreadable:
        return None
    return f"{unreadable} record(s) not readable by a worker (see unreadable_records)"


def status_document(state: StateDir, backend: Backend | None) -> dict[str, Any]:
    """The document; queue counts and the cluster from ``backend`` (zeros when None)."""
    live = liveness(state)
    now_s = time.time()
    meta = live.meta or {}
    beat = (live.heartbeat or {}) if live.running else {}
    workers = beat.get("workers") or {}
    instance = meta.get("instance_id")
    queue: dict[str, Any] = {
        "pending": 0,
        "inflight": 0,
        "delayed": 0,
        "oldest_pending_age_s": None,
    }
    dlq = {"pending": 0}
    cluster: list[dict[str, Any]] = []
    busy = 0
    unreadable: tuple[int, list[dict[str, Any]]] = (0, [])
    queue_error: str | None = None
    if backend is not None:
        try:
            unreadable = backend.unreadable_records()
            stats, dead, _ = backend.counts()
            queue = {
                "pending": stats.pending,
                "inflight": stats.inflight,
                "delayed": stats.delayed,
                "oldest_pending_age_s": stats.oldest_pending_age_s,
            }
            dlq = {"pending": dead}
            cluster = [_member(entry, now_s) for entry in backend.registry.live(now_s)]
            if live.running and isinstance(instance, str):
                busy = backend.queue.held_by(f"{instance}-")
        except QueueUnavailable as exc:
            queue_error = str(exc)
    components = beat.get("components") or {}
    verified: bool | None = None
    note: str | None = None
    if live.lock_held is not False and meta:
        verdict = verify_daemon(meta, state.lock_path)
        verified, note = verdict.proven, (verdict.reason or None)
        if not verdict.proven and not verdict.elsewhere:
            note = f"{note}; the lock is held{held_by(state.lock_path) or ' by no process visible here'}"
    return {
        "running": live.running,
        "state": live.state,
        "pid": meta.get("pid"),
        "pid_verified": verified,
        "pid_note": note,
        "host": meta.get("host"),
        "instance_id": instance,
        "started_at": meta.get("started_at"),
        "heartbeat_age_s": None if live.heartbeat_age_s is None else round(live.heartbeat_age_s, 3),
        "draining": bool(beat.get("draining", False)),
        "ready": bool(beat.get("ready", False)) and not unreadable[0] and not queue_error,
        "reason": (beat.get("reason") or queue_error or problem_reason(unreadable[0]))
        if live.running
        else live.state,
        "workers": {
            "configured": int(meta.get("workers") or 0),
            "alive": int(workers.get("alive") or 0),
            "busy": busy,
            "crash_looping": bool(workers.get("crash_looping", False)),
        },
        "queue": queue,
        "dlq": dlq,
        "cluster": cluster,
        "queue_url": None if backend is None else backend.location.redacted(),
        "queue_error": queue_error,
        "triggers": (components.get("triggers") or {}).get("triggers", []),
        "unreadable_records": {"count": unreadable[0], "first": unreadable[1]},
        "status_url": meta.get("status_url"),
        "version": meta.get("version"),
        "app_dirs": meta.get("app_dirs") or [],
        "state_dir": str(state.root),
        "activity": _activity(beat),
    }


def _activity(beat: dict[str, Any]) -> dict[str, Any]:
    """The heartbeat's activity when it has the expected shape, else an empty one."""
    activity = beat.get("activity")
    empty = empty_activity()
    if not isinstance(activity, dict) or activity.keys() != empty.keys():
        return empty
    return activity


CLUSTER_FIELDS = ("instance_id", "kind", "host", "pid", "state_dir", "heartbeat_age_s")


def _member(entry: dict[str, Any], now_s: float) -> dict[str, Any]:
    """One live daemon or pool serving the queue, as ``ps --json`` shows it."""
    raw = entry.get("workers")
    workers: dict[str, Any] = raw if isinstance(raw, dict) else {}
    started_s = _epoch_s(entry.get("started_at"))
    return {
        **{field: entry.get(field) for field in CLUSTER_FIELDS},
        "workers": {k: int(workers.get(k) or 0) for k in ("configured", "alive", "busy")},
        "draining": bool(entry.get("draining")),
        "version": entry.get("version"),
        "started_at": entry.get("started_at"),
        "uptime_s": None if started_s is None else round(max(0.0, now_s - started_s), 3),
        "running": _running(entry.get("running"), now_s),
    }


def _running(raw: Any, now_s: float) -> list[dict[str, Any]]:
    """What a member's busy workers run, each with its ``elapsed_s`` (ids only)."""
    tasks = []
    for item in raw if isinstance(raw, list) else []:
        if not isinstance(item, dict) or not isinstance(item.get("task_id"), str):
            continue
        started_s = item.get("started_at_s")
        elapsed_s = now_s - started_s if isinstance(started_s, int | float) else None
        tasks.append(
            {
                "task_id": item["task_id"],
                "flow_id": item.get("flow_id"),
                "step": item.get("step"),
                "attempt": item.get("attempt"),
                "elapsed_s": None if elapsed_s is None else round(max(0.0, elapsed_s), 3),
            }
        )
    return tasks


def _epoch_s(iso: Any) -> float | None:
    """Epoch seconds of an ISO-8601 time with a zone (None when it is not one)."""
    if not isinstance(iso, str):
        return None
    try:
        stamp = datetime.fromisoformat(iso)
    except ValueError:
        return None
    return stamp.timestamp() if stamp.tzinfo is not None else None
