"""``pending/``: tasks waiting for their due time, in buckets by due time.

Layout (see docs/queue-format.md)::

    pending/{due_ms // 1_000_000:07d}/{due_ms // 1000:010d}/{due_ms:013d}_{task_id}_{attempts}.json
    pending/.bell        touched after writes, so idle consumers wake (inotify IN_ATTRIB)

The outer bucket spans 1,000 s, the inner one a second. A consumer reads only the oldest due
inner bucket, so what a lease costs depends on how many tasks fall due in one second, never on
the depth of the backlog or its age. Every arrival is due now or later (enqueue, retry,
recovery, requeue), so nothing lands in a bucket older than the one being drained: a bucket in
the past only empties, and the consumer that finds it empty removes it (and its outer bucket once
that is empty too). An idle queue after a spike is as small as a fresh one. A writer whose
bucket was removed under it makes it again.

Task files written by the first layout (directly in ``pending/``) are moved into their buckets
by :meth:`PendingDir.migrate` and by any consumer that meets one: each move is one rename, so a
crash part-way leaves every file in one of the two places, both of which are read.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import re

from tracemind.backend.file.quarantine import quarantine
from tracemind.errors import QueueError
from tracemind.fsutil import (
    create_exclusive,
    ensure_dir,
    fsync_dir,
    rename_into,
    scan_entries,
    write_atomic,
    write_error,
    write_many_atomic,
)
from tracemind.queue.names import PendingName, is_temporary

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
    from typing import Protocol

    from tracemind.backend.file.pack_writer import PackWriter

    class SearchLimits(Protocol):
        """Which buckets one lookup lists (the census's ``BucketSearch`` is one)."""

        def may_hold(self, key: str, mtime_ns: int) -> bool:
            """Whether the bucket ``key`` (relative to ``pending/``) may hold the task now."""
            ...

        def missed(self, key: str, mtime_ns: int) -> None:
            """The bucket ``key``, listed at ``mtime_ns``, holds no copy of the task."""
            ...


OUTER_MS = 1_000_000
INNER_MS = 1_000
BELL = ".bell"
PLACE_ATTEMPTS = 5
"""How often a bucket is made again when consumers keep removing its outer bucket under it."""


CHUNK_TASKS = 10_000
"""Most tasks of one batch in one bucket: a batch's ids advance by a millisecond every
``CHUNK_TASKS`` tasks (see :func:`tracemind.queue.names.batch_task_ids`), and a task whose id is
that many milliseconds past its due time lands in a chunk of its due second."""
MAX_CHUNK = 999_999


def bucket_of(name: PendingName) -> str:
    """The bucket path of a task name, relative to ``pending/``, ending in a separator: the
    outer bucket of its due time, then its due second — with ``-{chunk:06d}`` when its id was
    made that many milliseconds after its due time (a big batch's later chunks)."""
    due_ms = name.due_ms
    chunk = int(name.task_id[:12], 16) - due_ms
    inner = f"{due_ms // INNER_MS:010d}"
    if 0 < chunk <= MAX_CHUNK:
        inner += f"-{chunk:06d}"
    return f"{due_ms // OUTER_MS:07d}/{inner}/"


def may_hold_id(inner_name: str, enqueued_ms: int) -> bool:
    """Whether the inner bucket named ``inner_name`` can hold a task whose id was made at
    ``enqueued_ms`` (its first 12 hex digits), from the two names alone: the converse of
    :func:`bucket_of`. A chunk ``{second}-{k}`` holds only ids made ``k`` ms after a due time
    of that second; a second's own bucket only ids made no later than its due time (every
    arrival is due at or after its enqueue time) or more than :data:`MAX_CHUNK` ms after it
    (a time given in the past)."""
    start_ms = int(inner_name[:10]) * INNER_MS
    if len(inner_name) > 10:
        return start_ms <= enqueued_ms - int(inner_name[11:]) < start_ms + INNER_MS
    return enqueued_ms < start_ms + INNER_MS or enqueued_ms > start_ms + MAX_CHUNK


def all_task_names(names: list[str]) -> bool:
    """Whether every one of ``names`` is a task file name (one regular expression over them
    all: a fast path for the common case; :meth:`PendingName.parse` says which are not)."""
    return not names or _task_names_pattern().fullmatch("/".join(names) + "/") is not None


@functools.cache
def _task_names_pattern() -> re.Pattern[str]:
    """Task file names, each followed by a separator (compiled on first use)."""
    return re.compile(r"(?:[0-9]{13}_[0-9a-f]{22}_[0-9]{1,6}\.json/)*")


def _bucket_number(name: str, width: int) -> int | None:
    """The number an outer (``width`` 7) or inner (10, maybe with a chunk) bucket's name
    carries, or None for a name that is not a bucket."""
    if width == 10 and len(name) == 17 and name[10] == "-" and name[11:].isdigit():
        name = name[:10]
    return int(name) if len(name) == width and name.isdigit() else None


class PendingDir:
    """The bucketed ``pending/`` directory of one queue root.

    Writers call :meth:`place` or :meth:`move_in`; consumers call :meth:`oldest_due`; readers
    call :meth:`entries`. The directory itself is created by the queue's ``prepare``.
    """

    def __init__(
        self,
        path: str,
        *,
        queue_root: str,
        tmp_dir: str,
        durable: bool,
        packs: PackWriter | None = None,
    ) -> None:
        self.path = path  # ends in a separator
        self.queue_root = queue_root
        self.tmp_dir = tmp_dir
        self.durable = durable
        self.packs = packs

    def path_of(self, name: PendingName) -> str:
        return self.path + bucket_of(name) + str(name)

    # -- writers -------------------------------------------------------------------------------

    def place(
        self,
        items: Sequence[tuple[PendingName, bytes]],
        *,
        digests: Sequence[str] | None = None,
        ring: bool = True,
        on_linked: Callable[[int, str], object] | None = None,
    ) -> list[str]:
        """Write new tasks (durably when the queue is), each whole or not at all: with a pack
        writer, records appended to packs (tagged with their idempotency keys' ``digests``,
        when given) and each name a link to its pack (see :mod:`tracemind.backend.file.packs`);
        else a file per task. Calls ``on_linked(index, path)`` once an item's task is in
        ``pending/`` (in order). Rings the bell unless ``ring`` is False (through a pack writer,
        which a writer of many calls rings at most every few ms: see
        :meth:`~tracemind.backend.file.pack_writer.PackWriter.ring_soon`). Returns the tasks'
        paths."""
        if len(items) == 1 and self.packs is not None and digests is None and on_linked is None:
            name, data = items[0]  # (the call of a process that submits one task at a time)
            path = self.path_of(name)
            self.packs.add_one(name.task_id, data, path, self._make_bucket)
            if ring:
                self.packs.ring_soon(self.ring)
            return [path]
        paths = [self.path_of(name) for name, _ in items]
        if not items:
            return paths
        if self.packs is not None:  # (a bucket is made when a link finds it missing)
            tags = digests if digests is not None else [None] * len(items)
            self.packs.add(
                [
                    (name.task_id, digest, data, path)
                    for (name, data), digest, path in zip(items, tags, paths, strict=True)
                ],
                self._make_bucket,
                on_linked,
            )
            if ring:
                self.packs.ring_soon(self.ring)
            return paths
        for bucket in {bucket_of(name) for name, _ in items}:
            self._make_bucket(self.path + bucket)
        targets = [(path, data) for path, (_, data) in zip(paths, items, strict=True)]
        if len(targets) == 1:
            write_atomic(
                *targets[0],
                tmp_dir=self.tmp_dir,
                durable=self.durable,
                remake_parent=self._make_bucket,
            )
        else:
            write_many_atomic(
                targets, tmp_dir=self.tmp_dir, durable=self.durable, remake_parent=self._make_bucket
            )
        if on_linked is not None:
            for index, path in enumerate(paths):
                on_linked(index, path)
        if ring:
            self.ring()
        return paths

    def move_in(
        self, source: str, name: PendingName, *, sync: bool = True, ring: bool = True
    ) -> bool:
        """Rename the task file at ``source`` into ``pending/`` as ``name``; False when
        ``source`` is gone (another process moved it first). With a durable queue the bucket is
        synced, unless ``sync`` is False (the caller then calls :meth:`sync_buckets`)."""
        target = self.path_of(name)
        try:  # (a missing bucket is made when the rename finds it gone)
            rename_into(source, target, self._make_bucket)
        except FileNotFoundError:
            if not os.path.lexists(source):
                return False
            gone = OSError(errno.ENOENT, "its bucket keeps disappearing")
            raise write_error(target, gone) from None
        except OSError as exc:
            raise write_error(target, exc) from exc
        if self.durable and sync:
            fsync_dir(os.path.dirname(target))
        if ring:  # (a caller moving many rings once: see sync_buckets)
            self.ring()
        return True

    def sync_buckets(self, names: Iterable[PendingName]) -> None:
        """After moves made with ``sync=False, ring=False``: make their entries durable (a
        durable queue; one sync per bucket) and wake the consumers once."""
        names = list(names)
        if names:
            self.ring()
        if self.durable:
            for bucket in {bucket_of(name) for name in names}:
                with contextlib.suppress(FileNotFoundError):  # emptied and removed already
                    fsync_dir(self.path + bucket)

    def ring(self) -> None:
        """Wake idle consumers (they watch ``pending/`` for this file's time to change)."""
        try:
            os.utime(self.path + BELL)
        except FileNotFoundError:
            with contextlib.suppress(OSError):
                os.close(create_exclusive(self.path + BELL, os.O_WRONLY))
        except OSError:
            pass  # only a wake-up hint: consumers look again on their own within 0.1 s

    def _make_bucket(self, inner: str) -> None:
        """Make the inner bucket directory ``inner`` (and its outer bucket) if missing; with a
        durable queue, sync the parents of what was made so the new entries survive."""
        inner = inner.rstrip("/")
        if os.path.isdir(inner):
            return
        outer = os.path.dirname(inner)
        made_outer = not os.path.isdir(outer)
        for attempt in range(PLACE_ATTEMPTS):
            try:
                ensure_dir(inner)
                break
            except QueueError:  # the outer bucket was removed between two mkdirs: again
                if attempt == PLACE_ATTEMPTS - 1:
                    raise
        if self.durable:  # a new directory entry is durable once its parent is synced
            if made_outer:
                fsync_dir(self.path)
            fsync_dir(outer)

    # -- consumers -----------------------------------------------------------------------------

    def oldest_due(
        self, now_ms: int, skip: Collection[PendingName] = ()
    ) -> tuple[list[str], int | None]:
        """(the task file names of the oldest bucket that holds a due task, sorted, but for
        those in ``skip``; the start of the next bucket in the future, or None). Each is a
        pending name (:meth:`PendingName.of_matched` parses it) of a regular file. A bucket that
        holds only names to skip (records this process may not read now) is passed over, never
        removed. Removes empty past buckets and moves first-layout files into their buckets on
        the way."""
        skipped = {str(name) for name in skip}
        outer_names = self._sorted_children(self.path, 7, migrate=True)
        if outer_names is None:  # first-layout files were moved into buckets: list again
            outer_names = self._sorted_children(self.path, 7, migrate=False) or []
        for outer_name in outer_names:
            outer_start_ms = int(outer_name) * OUTER_MS
            if outer_start_ms > now_ms:
                return [], outer_start_ms
            outer = self.path + outer_name + "/"
            inner_names = self._sorted_children(outer, 10, migrate=False) or []
            if not inner_names:
                self._remove_if_past(outer, outer_start_ms + OUTER_MS, now_ms)
                continue
            for inner_name in inner_names:
                inner_start_ms = int(inner_name[:10]) * INNER_MS
                if inner_start_ms > now_ms:
                    return [], inner_start_ms
                names = self._listed_names(outer + inner_name + "/")
                if not names:
                    self._remove_if_past(outer + inner_name, inner_start_ms + INNER_MS, now_ms)
                    continue
                if skipped:
                    names = [name for name in names if name not in skipped]
                if names:
                    names.sort()  # by due time, then task id
                    return names, None
        return [], None

    def _sorted_children(self, directory: str, width: int, *, migrate: bool) -> list[str] | None:
        """Bucket names in ``directory``, oldest first; anything else is moved aside. With
        ``migrate``, first-layout task files are moved into their buckets, and None says that
        some were (the listing is then out of date)."""
        buckets = []
        migrated = False
        for name, regular in scan_entries(directory):
            if _bucket_number(name, width) is not None and not regular:
                buckets.append(name)
            elif name == BELL or is_temporary(name):
                continue
            elif width == 7 and regular and (legacy := PendingName.parse(name)) is not None:
                if migrate:  # (a file of the first layout, in pending/ itself)
                    migrated = self.move_in(directory + name, legacy) or migrated
            else:
                quarantine(directory + name, self.queue_root, "not a bucket of pending/")
        buckets.sort()
        return None if migrated else buckets

    def _listed_names(self, bucket: str) -> list[str]:
        """The task file names in ``bucket``, unsorted; anything else is moved aside. One
        listing (:meth:`bucket_listing`) checked at once, by one regular expression over all its
        names (a bucket holds up to tens of thousands, and both workers list the next one when
        they finish a bucket); only a listing with another entry in it is read again, entry by
        entry, to move those aside."""
        names, others = self.bucket_listing(bucket)
        if not others and all_task_names(names):
            return names
        return self._checked_names(bucket)

    def _checked_names(self, bucket: str) -> list[str]:
        """The task file names in ``bucket``, entry by entry; anything else, and a task file
        name that is not a regular file, is moved aside."""
        names = []
        for name, regular in scan_entries(bucket):
            parsed = PendingName.parse(name)
            if parsed is not None and regular:
                names.append(name)
            elif not is_temporary(name):
                reason = "not a task file name" if parsed is None else "not a regular file"
                quarantine(bucket + name, self.queue_root, reason)
        return names

    @staticmethod
    def _remove_if_past(directory: str, end_ms: int, now_ms: int) -> None:
        """Remove an empty bucket whose time is over (a second of margin for clock steps)."""
        if end_ms + INNER_MS <= now_ms:
            with contextlib.suppress(OSError):  # not empty after all, or gone already
                os.rmdir(directory)

    def migrate(self) -> int:
        """Move every first-layout task file into its bucket; returns how many were moved."""
        moved = 0
        for name, regular in scan_entries(self.path):
            legacy = PendingName.parse(name) if regular else None
            if legacy is not None and self.move_in(self.path + name, legacy):
                moved += 1
        return moved

    # -- readers (never create or modify anything) ----------------------------------------------

    def entries(self, since_ms: int = 0) -> Iterator[PendingName]:
        """Every task name, in no order (buckets that end before ``since_ms`` are skipped;
        first-layout files are included). Records are never opened."""
        return (name for name in self._walk(since_ms, damaged=False) if name is not None)

    def _walk(
        self, since_ms: int, *, damaged: bool, any_kind: bool = False
    ) -> Iterator[PendingName | None]:
        """:meth:`entries`, and with ``damaged`` None for each entry that is not a task file;
        with ``any_kind``, entries named like a task that are not regular files too."""
        for outer_name, regular in scan_entries(self.path):
            if outer_name == BELL or is_temporary(outer_name):
                continue
            outer_number = None if regular else _bucket_number(outer_name, 7)
            if outer_number is None:
                legacy = PendingName.parse(outer_name) if regular else None
                if legacy is not None:
                    yield legacy
                elif damaged:
                    yield None
                continue
            if (outer_number + 1) * OUTER_MS <= since_ms:
                continue
            outer = self.path + outer_name + "/"
            for inner_name, inner_regular in scan_entries(outer):
                inner_number = None if inner_regular else _bucket_number(inner_name, 10)
                if inner_number is None:
                    if damaged and not is_temporary(inner_name):
                        yield None
                    continue
                if (inner_number + 1) * INNER_MS <= since_ms:
                    continue
                for name, is_file in scan_entries(outer + inner_name):
                    parsed = PendingName.parse(name) if is_file or any_kind else None
                    if parsed is not None:
                        yield parsed
                    elif damaged and not is_temporary(name):
                        yield None

    def find(self, task_id: str, search: SearchLimits | None = None) -> PendingName | None:
        """The waiting copy of ``task_id``, or None. O(1) for a task that waits as it was
        enqueued (due at its enqueue time, never delivered). A task waiting for a delay or a
        retry is due later than most of a backlog, so the buckets are searched newest first,
        and the search stops at the first bucket that holds it. Only buckets that can hold the
        id by their names are listed (:func:`may_hold_id`), and of those, with ``search``, only
        the ones ``search.may_hold(bucket, mtime_ns)`` allows (the bucket's path relative to
        ``pending/``, without a trailing separator; its mtime before the listing); a listing
        that finds no copy is reported by ``search.missed(bucket, mtime_ns)``. The census knows
        the task ids of the buckets it counted, so an unknown id costs a stat per bucket plus a
        listing of the buckets changed since, once per search."""
        enqueued_ms = int(task_id[:12], 16)
        fresh = PendingName(enqueued_ms, task_id, 0)
        if os.path.exists(self.path_of(fresh)):
            return fresh
        for name, regular in scan_entries(self.path):  # the first layout: flat files
            parsed = PendingName.parse(name) if regular else None
            if parsed is not None and parsed.task_id == task_id:
                return parsed
        marker = f"_{task_id}_"
        for outer_name in sorted(self._bucket_names(self.path, 7), reverse=True):
            outer = self.path + outer_name + "/"
            for inner_name in sorted(self._bucket_names(outer, 10), reverse=True):
                if not may_hold_id(inner_name, enqueued_ms):
                    continue
                key = outer_name + "/" + inner_name
                mtime_ns = None if search is None else self._mtime_ns(outer + inner_name)
                if search and mtime_ns is not None and not search.may_hold(key, mtime_ns):
                    continue
                copies = [
                    parsed
                    for name in _names_in(outer + inner_name)
                    if marker in name
                    and (parsed := PendingName.parse(name)) is not None
                    and parsed.task_id == task_id
                ]
                if copies:  # (a FIFO named so is found too, and then shows as damaged)
                    return max(copies, key=lambda n: n.attempts)
                if search is not None and mtime_ns is not None:
                    search.missed(key, mtime_ns)
        return None

    @staticmethod
    def _mtime_ns(path: str) -> int | None:
        """The directory's mtime; None when it cannot be had but may still be listed."""
        try:
            return os.stat(path, follow_symlinks=False).st_mtime_ns
        except OSError:  # gone since the listing (nothing to find), or e.g. EACCES (the
            return None  # listing says what is wrong)

    @staticmethod
    def bucket_listing(path: str) -> tuple[list[str], list[str]]:
        """(the names of the regular files in the bucket directory ``path``, the names of its
        other entries); both empty when it is gone. Like :func:`~tracemind.fsutil.scan_entries`
        (the same errors), without a Python step per entry."""
        try:
            with os.scandir(path) as listing:
                entries = list(listing)
        except FileNotFoundError:
            return [], []
        except (PermissionError, NotADirectoryError) as exc:
            raise _listing_error(path, exc) from exc
        try:  # (entry types come with the listing: no system call, except where they do not)
            regular = [entry.name for entry in entries if entry.is_file(follow_symlinks=False)]
        except OSError:  # one went between the listing and its lstat: not a record now
            regular = [entry.name for entry in entries if _is_regular(entry)]
        if len(regular) == len(entries):
            return regular, []
        return regular, [entry.name for entry in entries if not _is_regular(entry)]

    def newest_first(self) -> Iterator[PendingName]:
        """Every waiting task, by due time from the latest back (by task id within a bucket);
        lazily, bucket by bucket. First-layout files come first."""
        flat = [
            parsed
            for name, regular in scan_entries(self.path)
            if regular and (parsed := PendingName.parse(name)) is not None
        ]
        yield from sorted(flat, key=lambda n: (n.due_ms, n.task_id), reverse=True)
        for outer_name in sorted(self._bucket_names(self.path, 7), reverse=True):
            outer = self.path + outer_name + "/"
            for inner_name in sorted(self._bucket_names(outer, 10), reverse=True):
                names = [
                    parsed
                    for name, regular in scan_entries(outer + inner_name)
                    if regular and (parsed := PendingName.parse(name)) is not None
                ]
                yield from sorted(names, key=lambda n: (n.due_ms, n.task_id), reverse=True)

    @staticmethod
    def _bucket_names(directory: str, width: int) -> list[str]:
        return [
            name
            for name, regular in scan_entries(directory)
            if not regular and _bucket_number(name, width) is not None
        ]

    def buckets(self) -> Iterator[Bucket | PendingName | None]:
        """Every inner bucket (with its directory's mtime), every first-layout task file, and
        None for every entry of ``pending/`` or of an outer bucket that is neither."""
        for outer_name, regular in scan_entries(self.path):
            if outer_name == BELL or is_temporary(outer_name):
                continue
            outer_number = None if regular else _bucket_number(outer_name, 7)
            if outer_number is None:
                yield PendingName.parse(outer_name) if regular else None
                continue
            outer = self.path + outer_name + "/"
            try:
                with os.scandir(outer) as entries:
                    for entry in entries:
                        if is_temporary(entry.name):
                            continue
                        number = _bucket_number(entry.name, 10)
                        try:
                            is_dir = entry.is_dir(follow_symlinks=False)
                            mtime_ns = entry.stat(follow_symlinks=False).st_mtime_ns
                        except OSError:  # removed since the listing
                            continue
                        if number is None or not is_dir:
                            yield None
                        else:
                            yield Bucket(outer + entry.name, number * INNER_MS, mtime_ns)
            except (FileNotFoundError, NotADirectoryError):
                continue

    def has_any(self) -> bool:
        """Whether any task file is waiting (stops at the first one)."""
        for bucket in self.buckets():
            if isinstance(bucket, PendingName):
                return True
            if bucket is not None:
                for name in self.bucket_entries(bucket):
                    if name is not None:
                        return True
        return False

    def bucket_entries(self, bucket: Bucket) -> Iterator[PendingName | None]:
        """The task names in ``bucket``, and None for each entry that is not a task file."""
        for name, is_file in scan_entries(bucket.path):
            parsed = PendingName.parse(name) if is_file else None
            if parsed is not None:
                yield parsed
            elif not is_temporary(name):
                yield None


def _names_in(directory: str) -> list[str]:
    """Every entry's name in ``directory`` (none when it is gone)."""
    try:
        return os.listdir(directory)
    except FileNotFoundError:
        return []
    except (PermissionError, NotADirectoryError) as exc:
        raise _listing_error(directory, exc) from exc


def _listing_error(directory: str, exc: PermissionError | NotADirectoryError) -> QueueError:
    """The error :func:`~tracemind.fsutil.scan_entries` raises for ``exc``."""
    if isinstance(exc, PermissionError):
        return QueueError(f"{directory}: cannot list (permission denied)")
    return QueueError(f"{directory}: a path component is not a directory")


def _is_regular(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_file(follow_symlinks=False)
    except OSError:  # removed since the listing: whatever it was, not a record now
        return False


class Bucket:
    """One inner bucket: its directory, the first millisecond it covers, its mtime."""

    __slots__ = ("mtime_ns", "path", "start_ms")

    def __init__(self, path: str, start_ms: int, mtime_ns: int) -> None:
        self.path = path
        self.start_ms = start_ms
        self.mtime_ns = mtime_ns
