"""The dead-letter store: tasks that used their last attempt, with their error and history.

Layout (see docs/queue-format.md)::

    <dlq-dir>/<task_id>.json             one entry per dead task
    <dlq-dir>/purged/<task_id>.<ms>.json  audit copy of every purged entry (with ``purged_at``)
    <dlq-dir>/requeued/<task_id>.<ms>.json audit copy of every requeued entry
    <dlq-dir>/tmp/, <dlq-dir>/quarantine/

An entry is the task record plus ``attempts``, ``error``, ``traceback``, ``history`` (one item per
attempt), ``dead_at`` (epoch seconds) and ``lease_token`` (the delivery that dead-lettered it, used
to recognise a stale copy of that same delivery after a crash). Reads never create anything.
"""

from __future__ import annotations

import os

from tracemind.clock import Clock, system_clock
from tracemind.fsutil import dump_json, ensure_dir, read_json, scan_names, write_atomic
from tracemind.quarantine import quarantine
from tracemind.queue.names import done_name, is_task_id, is_temporary

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

    from tracemind.fsutil import StrPath


class DeadLetterStore:
    """Dead-letter entries in one directory; safe for many processes (every write is a rename)."""

    def __init__(self, root: StrPath, *, durable: bool, clock: Clock = system_clock) -> None:
        self.root = root
        self.durable = durable
        self.clock = clock

    def _path(self, task_id: str) -> str:
        return os.path.join(self.root, done_name(task_id))

    def put(self, task_id: str, entry: dict[str, Any]) -> None:
        ensure_dir(self.root)
        write_atomic(
            self._path(task_id),
            dump_json(entry),
            tmp_dir=ensure_dir(os.path.join(self.root, "tmp")),
            durable=self.durable,
        )

    def has(self, task_id: str) -> bool:
        return os.path.exists(self._path(task_id))

    def get(self, task_id: str) -> dict[str, Any] | None:
        """The entry, or None when absent or damaged (damaged entries are skipped by readers)."""
        try:
            entry = read_json(self._path(task_id))
        except (OSError, ValueError):
            return None
        return entry if isinstance(entry, dict) else None

    def entries(self) -> Iterator[dict[str, Any]]:
        """Every readable entry, in no particular order."""
        for name in scan_names(self.root):
            if name.endswith(".json") and is_task_id(name[:-5]):
                entry = self.get(name[:-5])
                if entry is not None:
                    yield entry

    def damaged(self) -> list[str]:
        """Entry files that cannot be read (for writers to quarantine; readers only count them)."""
        bad = []
        for name in scan_names(self.root):
            path = os.path.join(self.root, name)
            if is_temporary(name) or os.path.isdir(path):
                continue
            if (
                not (name.endswith(".json") and is_task_id(name[:-5]))
                or self.get(name[:-5]) is None
            ):
                bad.append(path)
        return bad

    def quarantine_damaged(self) -> int:
        moved = [quarantine(path, self.root, "unreadable DLQ entry") for path in self.damaged()]
        return sum(1 for path in moved if path is not None)

    def count(self) -> int:
        """How many readable entries there are (a damaged entry is not a dead task)."""
        return sum(1 for _ in self.entries())

    def newest_first(self) -> list[dict[str, Any]]:
        return sorted(self.entries(), key=_dead_at, reverse=True)

    def entry_path(self, task_id: str) -> str:
        """Where the entry of ``task_id`` lives (for writers that move it atomically)."""
        return self._path(task_id)

    def archive(self, entry: dict[str, Any], folder: str, stamp_key: str) -> str:
        """Write an audit copy of ``entry`` to ``folder/`` with ``stamp_key`` set to now."""
        now = self.clock()
        archive = os.path.join(
            ensure_dir(os.path.join(self.root, folder)),
            f"{entry.get('task_id')}.{int(now * 1000)}.json",
        )
        write_atomic(
            archive,
            dump_json({**entry, stamp_key: now}),
            tmp_dir=ensure_dir(os.path.join(self.root, "tmp")),
            durable=self.durable,
        )
        return archive

    def purge(self, task_id: str) -> bool:
        """Remove the entry, keeping an audit copy in ``purged/``; False if there was none.

        The entry is taken by one ``rename`` into ``purged/`` (so a purge racing another purge
        or a requeue of the same entry either wins it whole or reports False), then stamped with
        ``purged_at`` in place.
        """
        if self.get(task_id) is None:
            return False
        folder = ensure_dir(os.path.join(self.root, "purged"))
        taken = os.path.join(folder, f"{task_id}.{int(self.clock() * 1000)}.json")
        try:
            os.rename(self._path(task_id), taken)
        except FileNotFoundError:
            return False
        try:
            entry = read_json(taken)
        except (OSError, ValueError):
            return True  # taken whole; it only lacks its stamp
        write_atomic(
            taken,
            dump_json({**entry, "purged_at": self.clock()}),
            tmp_dir=ensure_dir(os.path.join(self.root, "tmp")),
            durable=self.durable,
        )
        return True


def _dead_at(entry: dict[str, Any]) -> float:
    """When the entry died, for sorting (an entry without a usable time sorts last)."""
    value = entry.get("dead_at")
    return float(value) if isinstance(value, int | float) else 0.0
