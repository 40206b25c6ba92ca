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

import contextlib
import os
import stat

from tracemind.backend.file.quarantine import quarantine
from tracemind.clock import Clock, system_clock
from tracemind.fsutil import (
    dump_json,
    ensure_dir,
    read_json,
    scan_entries,
    write_atomic,
)
from tracemind.queue.names import done_name, is_task_id, is_temporary

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import Any

    from tracemind.fsutil import StrPath


class DeadLetterStore:
    """Dead-letter entries in one directory; safe for many processes (every write is a rename)."""

    def __init__(self, root: StrPath, *, durable: bool, clock: Clock = system_clock) -> None:
        self.root = root
        self.durable = durable
        self.clock = clock
        self.on_put: Callable[[], object] | None = None
        """Called after each entry written (the queue leaves their count for readers)."""

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
        if self.on_put is not None:
            self.on_put()

    def has(self, task_id: str) -> bool:
        return os.path.exists(self._path(task_id))

    def has_trace(self, task_id: str) -> bool:
        """Whether the task has an entry here or an audit copy (purged or requeued); lists the
        audit folders (for recovery paths only)."""
        if os.path.lexists(self._path(task_id)):
            return True
        prefix = task_id + "."
        for folder in ("purged", "requeued"):
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                if any(
                    name.startswith(prefix) for name in os.listdir(os.path.join(self.root, folder))
                ):
                    return True
        return False

    def get(self, task_id: str) -> dict[str, Any] | None:
        """The entry, or None when absent or damaged (damaged entries are skipped by readers).

        An entry this process may not read is None too, but it is no damage: it is logged once
        (with the fix), never listed by :meth:`damaged`, so never quarantined."""
        try:
            return self._load(self._path(task_id))
        except OSError as exc:
            if not isinstance(exc, FileNotFoundError):
                from tracemind.backend.file.problems import log_unreadable

                log_unreadable(self._path(task_id), exc)
            return None

    def _load(self, path: str) -> dict[str, Any] | None:
        """The entry at ``path``; None when damaged (torn, not an object, not a regular file);
        ``OSError`` when it cannot be read (absent, or this process may not read it)."""
        try:
            entry = read_json(path)
        except ValueError:  # DamagedEntry included: a FIFO or symlink is never opened
            return None
        return entry if isinstance(entry, dict) else None

    def entries(self, limit: int | None = None) -> Iterator[dict[str, Any]]:
        """Every readable entry, in no particular order (only regular files are opened); with
        ``limit``, those of the ``limit`` newest task ids (ids grow with creation time), so
        that only ``limit`` entries are read however many there are."""
        names = [
            name[:-5]
            for name, regular in scan_entries(self.root)
            if regular and name.endswith(".json") and is_task_id(name[:-5])
        ]
        if limit is not None:
            names = sorted(names, reverse=True)[:limit]
        for task_id in names:
            entry = self.get(task_id)
            if entry is not None:
                yield entry

    def damaged(self) -> list[str]:
        """Entries that are damaged (for writers to quarantine; readers only count them): files
        that do not parse or are not named like an entry, and anything that is not a regular
        file — a FIFO, socket, device or symlink, or a directory named like an entry. An entry
        this process may not read is not damaged (see :meth:`get`)."""
        bad = []
        for name, regular in scan_entries(self.root):
            path = os.path.join(self.root, name)
            named_like_entry = name.endswith(".json") and is_task_id(name[:-5])
            if is_temporary(name):
                continue
            if not regular:
                if named_like_entry or not _is_real_dir(path):
                    bad.append(path)  # subdirectories (tmp/, purged/, ...) are the store's own
                continue
            if not named_like_entry:
                bad.append(path)
                continue
            try:
                if self._load(path) is None:
                    bad.append(path)
            except OSError as exc:
                if not isinstance(exc, FileNotFoundError):
                    from tracemind.backend.file.problems import log_unreadable

                    log_unreadable(path, exc)
        return bad

    def quarantine_damaged(self) -> int:
        moved = [quarantine(path, self.root, "unreadable DLQ entry") for path in self.damaged()]
        return sum(1 for path in moved if path is not None)

    def count(self) -> int:
        """How many readable entries there are (a damaged entry is not a dead task)."""
        return sum(1 for _ in self.entries())

    def newest_first(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Entries by time of death, newest first; with ``limit``, of the ``limit`` newest
        task ids only (see :meth:`entries`)."""
        return sorted(self.entries(limit), key=_dead_at, reverse=True)

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


def _is_real_dir(path: str) -> bool:
    """Whether ``path`` is a directory itself (not a symlink to one)."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _dead_at(entry: dict[str, Any]) -> float:
    """When the entry died, for sorting (an entry without a usable time sorts last)."""
    value = entry.get("dead_at")
    return float(value) if isinstance(value, int | float) else 0.0
