"""Reading a file queue: where a task is and how many wait — the part of
:class:`~tracemind.backend.file.queue.FileQueue` that never creates or changes anything
(``tm task show``, ``tm queue stats``, ``/status``), over the directories every part shares.
The layout is written down in docs/queue-format.md.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os

from tracemind.backend.file.dlq import DeadLetterStore
from tracemind.backend.file.pack_writer import PackWriter
from tracemind.backend.file.packs import task_bytes
from tracemind.backend.file.pending import PendingDir
from tracemind.clock import Clock, system_clock
from tracemind.fsutil import read_regular, scan_entries, scan_names
from tracemind.log import get_logger
from tracemind.queue.names import InflightName, done_bucket, done_name, is_temporary
from tracemind.queue.protocol import QueueStats, TaskInfo, TaskStatus
from tracemind.queue.records import count_of, parse_task_file, succeeded_entry

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any

    from tracemind.backend.file.census import BucketSearch, Census
    from tracemind.backend.file.registry import Registry
    from tracemind.fsutil import StrPath

LAYOUT_FILE = "layout-2"
"""Present once a queue directory holds no record of the first layout (see
:meth:`~tracemind.backend.file.queue_writes.QueueWrites.migrate`)."""
FIND_PASSES = 3
"""Searches that must all miss before ``find`` says a task does not exist."""


def epoch_ms(epoch_s: float) -> int:
    """Epoch seconds as whole epoch milliseconds (how names and the census carry times)."""
    return int(epoch_s * 1000)


class QueueReads:
    """The read-only verbs of a file queue, and its directories (see the module)."""

    def __init__(
        self, root: StrPath, dlq: DeadLetterStore, *, durable: bool, clock: Clock = system_clock
    ) -> None:
        self.root = root
        self.dlq = dlq
        self.durable = durable
        self.clock = clock
        # Directories as strings ending in a separator: names are joined to them with "+"
        # (no pathlib on `tm enqueue`'s path, nor on the lease/ack hot path).
        self._pending = os.path.join(root, "pending", "")
        self._inflight = os.path.join(root, "inflight", "")
        self._done = os.path.join(root, "done", "")
        self._staging = os.path.join(root, "staging", "")
        self._cancelled = os.path.join(root, "cancelled", "")
        self._cancel_requests = os.path.join(root, "cancel-requests", "")
        self._tmp = os.path.join(root, "tmp")
        self._packs = os.path.join(root, "packs")
        self.packs = PackWriter(self._packs, self._tmp, durable=durable)
        self.waiting = PendingDir(
            self._pending,
            queue_root=os.fspath(root),
            tmp_dir=self._tmp,
            durable=durable,
            packs=self.packs,
        )
        self._layout_current = False

    @functools.cached_property
    def pending_dir(self) -> Path:
        return _as_path(self._pending)

    @functools.cached_property
    def inflight_dir(self) -> Path:
        return _as_path(self._inflight)

    @functools.cached_property
    def done_dir(self) -> Path:
        return _as_path(self._done)

    @functools.cached_property
    def registry(self) -> Registry:
        """Who serves this queue (see :mod:`tracemind.backend.file.registry`)."""
        from tracemind.backend.file.registry import Registry

        return Registry(self.root, self._tmp, self.clock)

    @functools.cached_property
    def tmp_dir(self) -> Path:
        return _as_path(self._tmp)

    @property
    def _log(self) -> Any:
        return get_logger(
            "tracemind.queue"
        )  # not at construction: keeps structlog off `tm enqueue`

    @property
    def cancelled_dir(self) -> str:
        return self._cancelled

    def cancelled_path(self, task_id: str) -> str:
        return self._cancelled + done_bucket(task_id) + "/" + done_name(task_id)

    def cancel_requested(self, task_id: str) -> bool:
        """Whether someone asked to cancel ``task_id`` while it was in flight; read-only."""
        # (asked before every step of every task: an answer without an exception for "no")
        return os.access(self._cancel_requests + task_id, os.F_OK, follow_symlinks=False)

    def _inflight_names(self) -> list[InflightName]:
        return [n for n in map(InflightName.parse, scan_names(self._inflight)) if n is not None]

    def done_path(self, task_id: str) -> str:
        """Where the terminal record of a succeeded task lives."""
        return self._done + done_bucket(task_id) + "/" + done_name(task_id)

    def _done_record(self, task_id: str) -> str | None:
        """The path of the task's done record (where a first-layout queue kept it too), if any.
        Its existence fences every other copy of the task: a succeeded task never runs again."""
        path = self.done_path(task_id)
        if os.path.exists(path):
            return path
        flat = self._done + done_name(task_id)
        return flat if not self._migrated() and os.path.exists(flat) else None

    def _is_done(self, task_id: str) -> bool:
        return self._done_record(task_id) is not None

    def _migrated(self) -> bool:
        """Whether this queue holds no first-layout records any more (remembered once seen)."""
        if not self._layout_current:
            self._layout_current = os.path.exists(os.path.join(self.root, LAYOUT_FILE))
        return self._layout_current

    def _relative(self, path: str) -> str:
        """``path`` relative to the queue root (how problem reports name records)."""
        return os.path.relpath(path, self.root)

    def stats(self) -> QueueStats:
        """Exact counts, at a cost that follows what changed since the last census a writer
        saved (see :mod:`tracemind.backend.file.census`); read-only."""
        from tracemind.backend.file import census

        now_ms = epoch_ms(self.clock())
        cached = census.load(os.fspath(self.root))
        counted, _ = census.count_pending(self.waiting, now_ms, cached, keep=False)
        return self._stats(counted, now_ms)

    def counts(self) -> tuple[QueueStats, int, int]:
        """(:meth:`stats`, dead-letter entries, damaged dead-letter entries), from one read of
        the census; dead letters are counted by name, and taken from the census while their
        directory is unchanged; read-only."""
        from tracemind.backend.file import census

        now_ms = epoch_ms(self.clock())
        cached = census.load(os.fspath(self.root))
        counted, _ = census.count_pending(self.waiting, now_ms, cached, keep=False)
        dead_letters = os.fspath(self.dlq.root)
        dead, damaged, _ = census.count_dead(dead_letters, cached, census.settled_before_ns(now_ms))
        return self._stats(counted, now_ms), dead, damaged

    def _stats(self, counted: Census, now_ms: int) -> QueueStats:
        inflight = damaged = 0
        for name, regular in scan_entries(self._inflight):
            if regular and InflightName.parse(name) is not None:
                inflight += 1
            elif not is_temporary(name):
                damaged += 1
        oldest = counted.oldest_due_ms
        age = None if oldest is None else max(0.0, (now_ms - oldest) / 1000)
        return QueueStats(
            counted.pending, counted.delayed, inflight, age, counted.damaged + damaged
        )

    def copies_that_may_be_stale(self) -> set[str]:
        """Ids of tasks with a copy that a crash could have left beside a done record: every
        inflight copy, and every pending copy delivered before (a full listing; retention only)."""
        ids = {n.task_id for n in map(InflightName.parse, scan_names(self._inflight)) if n}
        ids.update(name.task_id for name in self.waiting.entries() if name.attempts > 0)
        return ids

    def has_waiting(self) -> bool:
        """Whether any task is pending or delayed (stops at the first one found); read-only."""
        return self.waiting.has_any()

    def finished(self, task_id: str) -> TaskInfo | None:
        """The task's terminal state (succeeded or dead) in O(1); None while it is anywhere else
        (pending, delayed, in flight, staged) or does not exist. Succeeded is looked up first:
        a task that finishes during the call is reported finished or not, never wrongly dead."""
        done = self._done_record(task_id)
        if done is not None:
            entry = succeeded_entry(*_read_or_empty(done, task_id))
            return TaskInfo(
                task_id,
                TaskStatus.SUCCEEDED,
                count_of(entry.get("attempts")),
                entry,
                finished_s=_float_or_none(entry.get("finished_at")),
            )
        cancelled = self.cancelled_path(task_id)
        if os.path.exists(cancelled):
            record, _ = _read_or_empty(cancelled, task_id)
            stamp = _cancel_stamp(cancelled, task_id)
            return TaskInfo(
                task_id,
                TaskStatus.CANCELLED,
                0,
                {key: value for key, value in record.items() if key != "flow"} | stamp,
                finished_s=_float_or_none(stamp.get("cancelled_at")),
            )
        dead = self.dlq.get(task_id)
        if dead is not None:
            return TaskInfo(
                task_id,
                TaskStatus.DEAD,
                count_of(dead.get("attempts")),
                dead,
                finished_s=_float_or_none(dead.get("dead_at")),
            )
        return None

    def waiting_since(self, epoch_s: float) -> int:
        """Tasks enqueued at or after ``epoch_s`` and never delivered yet, read-only."""
        since_ms = int(epoch_s * 1000)
        since = f"{since_ms:012x}"
        names = self.waiting.entries(since_ms)
        return sum(1 for n in names if n.attempts == 0 and n.task_id[:12] >= since)

    def held_by(self, consumer_prefix: str) -> int:
        names = map(InflightName.parse, scan_names(self._inflight))
        return sum(1 for n in names if n is not None and n.consumer.startswith(consumer_prefix))

    def find(self, task_id: str) -> TaskInfo | None:
        """Where the task is now; read-only. A task moves between ``inflight/`` and ``pending/``
        (a lease, a retry, a recovery) by renames that a search of one then the other can miss,
        so "nowhere" is answered only after :data:`FIND_PASSES` searches agree. Buckets of
        ``pending/`` that the census counted, unchanged since, and whose task ids do not
        include this one are not listed, nor is a bucket again that an earlier pass listed and
        that is unchanged and settled (see :class:`tracemind.backend.file.census.BucketSearch`)."""
        from tracemind.backend.file import census

        cached = census.load(os.fspath(self.root))
        search = census.BucketSearch(cached, task_id, epoch_ms(self.clock()))
        for _ in range(FIND_PASSES):
            info = self._find_once(task_id, search)
            if info is not None:
                return info
        return None

    def _find_once(self, task_id: str, search: BucketSearch | None = None) -> TaskInfo | None:
        if self._is_done(task_id):
            return self.finished(task_id)
        leases = [
            n
            for n in map(InflightName.parse, scan_names(self._inflight))
            if n is not None and n.task_id == task_id
        ]
        if leases:
            lease = max(leases, key=lambda n: n.attempt)
            record, _ = _read_or_empty(self._inflight + str(lease), task_id)
            return TaskInfo(task_id, TaskStatus.INFLIGHT, lease.attempt, record)
        copy = self.waiting.find(task_id, search)
        if copy is not None:
            due = copy.due_ms <= epoch_ms(self.clock())
            status = TaskStatus.PENDING if due else TaskStatus.DELAYED
            record, _ = _read_or_empty(self.waiting.path_of(copy), task_id)
            if not record:  # a first-layout file not yet moved into its bucket
                record, _ = _read_or_empty(self._pending + str(copy), task_id)
            return TaskInfo(task_id, status, copy.attempts, record, due_s=copy.due_ms / 1000)
        return self.finished(task_id)

    def oldest_unsettled_ms(self) -> int | None:
        """See :func:`tracemind.backend.file.pack_checkpoint.oldest_unsettled_ms`; read-only."""
        from tracemind.backend.file.pack_checkpoint import oldest_unsettled_ms

        return oldest_unsettled_ms(self._packs)


def _read_or_empty(path: StrPath, task_id: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The task's file (or its part of a pack) for a reader: empty when damaged (absent, torn,
    not a regular file); a :class:`QueueError` naming the fix when this process may not read it
    (that is no damage)."""
    try:
        return parse_task_file(task_bytes(read_regular(path), task_id))
    except PermissionError as exc:
        from tracemind.backend.file.problems import unreadable_error

        raise unreadable_error(path, exc) from exc
    except (OSError, ValueError):
        return {}, None


def _cancel_stamp(path: str, task_id: str) -> dict[str, Any]:
    """The ``{"status": "cancelled", "cancelled_at"}`` line of a cancelled task's file."""
    with contextlib.suppress(OSError, ValueError):
        for line in task_bytes(read_regular(path), task_id).split(b"\n")[1:]:
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict) and entry.get("status") == "cancelled":
                    return entry
    return {"status": "cancelled"}


def _float_or_none(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _as_path(path: str) -> Path:
    from pathlib import Path

    return Path(path)
