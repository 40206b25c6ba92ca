"""Listing tasks newest first (``tm task ls``), at a cost bounded by what is asked for.

Each state is read from its own place, newest first, and only as far as needed: ``inflight/``
(small), the ``pending/`` buckets from the latest due time back, the hour buckets of ``done/``
and ``cancelled/`` from the latest hour back, and the DLQ's names. The candidates are merged by
task id (ids sort by enqueue time), and only the records listed — or, with a flow filter, at
most :data:`READ_CAP` of them — are opened.
"""

from __future__ import annotations

import itertools
import os
from typing import TYPE_CHECKING, Any

from tracemind.backend.file.packs import task_bytes
from tracemind.fsutil import read_regular, scan_entries, scan_names
from tracemind.queue.names import InflightName, is_task_id
from tracemind.queue.protocol import TaskInfo, TaskStatus
from tracemind.queue.records import count_of, parse_task_file, succeeded_entry

if TYPE_CHECKING:
    from collections.abc import Collection, Iterator

    from tracemind.backend.file.queue import FileQueue

READ_CAP = 10_000
"""At most this many records are opened by one listing with a flow filter."""


class Candidate:
    __slots__ = ("attempts", "due_ms", "path", "status", "task_id")

    def __init__(
        self, task_id: str, status: TaskStatus, path: str, attempts: int, due_ms: int | None
    ) -> None:
        self.task_id = task_id
        self.status = status
        self.path = path
        self.attempts = attempts
        self.due_ms = due_ms


def newest_tasks(
    queue: FileQueue,
    statuses: Collection[TaskStatus],
    limit: int,
    *,
    flow_id: str | None = None,
) -> list[TaskInfo]:
    """Up to ``limit`` tasks in ``statuses``, newest first (of ``flow_id`` when given)."""
    now_ms = int(queue.clock() * 1000)
    per_source = limit if flow_id is None else READ_CAP
    sources: list[Iterator[Candidate]] = []
    if TaskStatus.INFLIGHT in statuses:
        sources.append(_inflight(queue))
    if {TaskStatus.PENDING, TaskStatus.DELAYED} & set(statuses):
        sources.append(c for c in _waiting(queue, now_ms) if c.status in statuses)
    if TaskStatus.SUCCEEDED in statuses:
        sources.append(_hours(os.fspath(queue.done_dir), TaskStatus.SUCCEEDED))
    if TaskStatus.CANCELLED in statuses:
        sources.append(_hours(queue.cancelled_dir, TaskStatus.CANCELLED))
    if TaskStatus.DEAD in statuses:
        sources.append(_dead(os.fspath(queue.dlq.root)))
    candidates = [c for source in sources for c in itertools.islice(source, per_source)]
    candidates.sort(key=lambda c: c.task_id, reverse=True)
    found: list[TaskInfo] = []
    for candidate in candidates[:READ_CAP]:
        info = _info(candidate)
        if info is not None and (flow_id is None or info.record.get("flow_id") == flow_id):
            found.append(info)
            if len(found) == limit:
                break
    return found


def _inflight(queue: FileQueue) -> Iterator[Candidate]:
    names = [n for n in map(InflightName.parse, scan_names(queue.inflight_dir)) if n]
    names.sort(key=lambda n: n.task_id, reverse=True)
    for name in names:
        path = os.path.join(queue.inflight_dir, str(name))
        yield Candidate(name.task_id, TaskStatus.INFLIGHT, path, name.attempt, None)


def _waiting(queue: FileQueue, now_ms: int) -> Iterator[Candidate]:
    for name in queue.waiting.newest_first():
        status = TaskStatus.PENDING if name.due_ms <= now_ms else TaskStatus.DELAYED
        yield Candidate(
            name.task_id, status, queue.waiting.path_of(name), name.attempts, name.due_ms
        )


def _hours(root: str, status: TaskStatus) -> Iterator[Candidate]:
    hours = sorted(
        (n for n, regular in scan_entries(root) if not regular and n.isdigit()), reverse=True
    )
    for hour in hours:
        folder = os.path.join(root, hour)
        names = sorted(
            (n for n, regular in scan_entries(folder) if regular and is_task_id(n[:-5])),
            reverse=True,
        )
        for name in names:
            yield Candidate(name[:-5], status, os.path.join(folder, name), 0, None)


def _dead(root: str) -> Iterator[Candidate]:
    names = sorted(
        (
            n
            for n, regular in scan_entries(root)
            if regular and n.endswith(".json") and is_task_id(n[:-5])
        ),
        reverse=True,
    )
    for name in names:
        yield Candidate(name[:-5], TaskStatus.DEAD, os.path.join(root, name), 0, None)


def _info(candidate: Candidate) -> TaskInfo | None:
    """The task a candidate names, from its record; None when the record went meanwhile."""
    try:
        data = read_regular(candidate.path)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        data = b""
    record: dict[str, Any]
    try:
        if candidate.status is TaskStatus.DEAD:
            import json

            loaded = json.loads(data)
            record = loaded if isinstance(loaded, dict) else {}
        else:
            first, completion = parse_task_file(task_bytes(data, candidate.task_id))
            record = succeeded_entry(first, completion)
    except ValueError:
        record = {}
    attempts = candidate.attempts or count_of(record.get("attempts"))
    due_s = None if candidate.due_ms is None else candidate.due_ms / 1000
    finished = record.get("finished_at") or record.get("dead_at") or record.get("cancelled_at")
    finished_s = float(finished) if isinstance(finished, int | float) else None
    return TaskInfo(candidate.task_id, candidate.status, attempts, record, due_s, finished_s)
