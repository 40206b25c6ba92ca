"""Checkpoints: settling the packs in ``packs/`` — retiring those whose writer is gone, marking
a live writer's journal, and after a reboot giving back what a power loss took (the why:
:mod:`tracemind.backend.file.packs`)."""

from __future__ import annotations

import contextlib
import os
import stat

from tracemind.backend.file.packs import (
    JOURNAL_SUFFIX,
    SUFFIX,
    WRITING_BYTE,
    boot_id,
    header,
    held,
    is_pack,
    journal_path,
    lock_replay,
    record_lines,
    records,
    retire,
    settled,
    writer_alive,
)
from tracemind.backend.file.quarantine import quarantine
from tracemind.errors import QueueError
from tracemind.fsutil import (
    MAX_RECORD_BYTES,
    DamagedEntry,
    open_regular,
    read_fd,
    read_regular,
    scan_names,
    sync_filesystem,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable


CHECKPOINT_PACKS = 1_000
"""Most packs one checkpoint looks at (the oldest first): its cost stays bounded however many
writers came and went since the last one; the next checkpoint takes the rest."""
HEADER_BYTES = 256
"""Enough of a pack to read its header."""


def _pack_names(packs_dir: str) -> list[str]:
    return sorted(n for n in scan_names(packs_dir) if n.endswith(SUFFIX))


def checkpoint(
    packs_dir: str, replay: Callable[[str, bytes], bool], *, limit: int = CHECKPOINT_PACKS
) -> tuple[int, int]:
    """Make every link of the listed packs durable, and say so: (packs retired, tasks replayed).

    One ``syncfs`` covers all of them. Then a pack whose writer is gone (its alive lock is
    free: no clock decides it) loses its ``packs/`` name; a live writer's pack that was not
    being written to when it was read gets an ``S <offset>`` line in its journal saying that
    every record before that offset is linked durably (made durable itself before this
    returns). Looks at ``limit`` packs at most, the oldest first, and reads only the header of
    a pack whose writer is gone.

    A pack written in an earlier boot first has each of its records past that offset (as its
    journal has them) offered to ``replay(task id, record JSON)``, which writes the task back
    when it is found nowhere, or its record where a power loss lost it, and says whether it
    did; that pack is locked meanwhile (byte :data:`REPLAY_BYTE`, never waited for), so two
    processes never replay one pack at once, and one that gets it after another retired it sees
    its name gone. An entry that is no pack is moved aside; one that cannot be read is left for
    the next time (it holds retention back until it can)."""
    current = boot_id()
    retired: list[str] = []
    marks: list[tuple[str, int]] = []  # (the journal, or pack, of a live writer; offset settled)
    replaying: list[int] = []  # descriptors holding replay locks until the names are gone
    replayed = 0
    try:
        listed = list(scan_names(packs_dir))
        packs = sorted(n for n in listed if n.endswith(SUFFIX))
        for name in packs[:limit]:
            path = os.path.join(packs_dir, name)
            if _not_a_pack(path):
                quarantine(path, os.path.dirname(packs_dir), "not a pack")
                continue
            try:
                fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError:
                continue
            keep_open = False
            try:
                alive = writer_alive(fd)
                head = os.pread(fd, HEADER_BYTES, 0)
                if not is_pack(head):  # (a power loss may leave a pack empty, not its journal)
                    head = _head(journal_path(path))
                if not is_pack(head):
                    if not alive:
                        quarantine(path, os.path.dirname(packs_dir), "not a pack")
                    continue
                if alive:
                    mark = _settle_mark(fd, path)
                    if mark is not None:
                        marks.append(mark)
                    continue
                if header(head)[0] != current:
                    if not lock_replay(fd) or os.stat(path).st_ino != os.fstat(fd).st_ino:
                        continue  # another process replays it, or has retired it
                    keep_open = True
                    replaying.append(fd)
                    data = _journal_or(path, read_fd(fd, path))[1]
                    for task_id, record in records(data, settled(data)):
                        replayed += replay(task_id, record)
            except (OSError, DamagedEntry):
                continue
            finally:
                if not keep_open:
                    os.close(fd)
            retired.append(path)
        if not retired and not marks:
            return 0, replayed
        if not sync_filesystem(packs_dir):
            raise QueueError(f"{packs_dir}: cannot sync the file system (syncfs is missing)")
        for target, offset in marks:
            with contextlib.suppress(OSError):
                _append_durably(target, b"\nS %d\n" % offset)
        for path in retired:
            retire(path)
        _remove_orphan_journals(packs_dir, listed)
        return len(retired), replayed
    finally:
        for fd in replaying:
            os.close(fd)


def _settle_mark(fd: int, path: str) -> tuple[str, int] | None:
    """(where to append it, offset) of the mark that would settle a live writer's pack open
    at ``fd``; None when there is nothing new to settle, or its writer is writing."""
    journal, data = _journal_or(path, read_fd(fd, path))
    lines = record_lines(data, settled(data))
    if not lines or held(fd, WRITING_BYTE):  # (asked after the read)
        return None
    return journal or path, lines[-1][0]


def _head(path: str) -> bytes:
    """The first bytes of the file at ``path`` (b"" when it cannot be read)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return b""
    try:
        return os.pread(fd, HEADER_BYTES, 0)
    finally:
        os.close(fd)


def _journal_or(pack_path: str, pack_data: bytes) -> tuple[str, bytes]:
    """(the path of the pack's journal, its bytes), or ("", ``pack_data``) for a pack without
    one (a queue that is not durable)."""
    path = journal_path(pack_path)
    try:
        data = read_regular(path)
    except FileNotFoundError:
        return "", pack_data
    return (path, data) if is_pack(data) else ("", pack_data)


def _remove_orphan_journals(packs_dir: str, listed: list[str]) -> None:
    """Remove the journals whose pack is gone (a retirement interrupted between its two
    removals: the journal goes first; a new pack is named before its journal)."""
    names = set(listed)
    for name in listed:
        pack = name[: -len(JOURNAL_SUFFIX)] + SUFFIX
        if not name.endswith(JOURNAL_SUFFIX) or pack in names:
            continue
        if not os.path.lexists(os.path.join(packs_dir, pack)):  # (a listing may miss a new one)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(packs_dir, name))


def _append_durably(path: str, line: bytes) -> None:
    """Append ``line`` at the end of the file at ``path`` (after whatever others appended) and
    make it durable."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.write(fd, line)
        os.fdatasync(fd)
    finally:
        os.close(fd)


def _not_a_pack(path: str) -> bool:
    """Whether the ``packs/`` entry at ``path`` is damage: not a regular file, or too big."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    return not stat.S_ISREG(info.st_mode) or info.st_size > MAX_RECORD_BYTES


def oldest_unsettled_ms(packs_dir: str) -> int | None:
    """The enqueue time (from the task id) of the oldest record still in ``packs/``, or None:
    retention removes only tasks enqueued before it (see the module's docstring)."""
    oldest: int | None = None
    for name in _pack_names(packs_dir):
        path = os.path.join(packs_dir, name)
        try:
            fd = open_regular(path)
            try:
                data = read_fd(fd, path)
            finally:
                os.close(fd)
            with contextlib.suppress(FileNotFoundError):  # (its settled marks are there)
                journal = read_regular(journal_path(path))
                data = journal if is_pack(journal) else data
        except DamagedEntry:
            continue  # damage, not a pack: it holds no record (a checkpoint moves it aside)
        except OSError:
            created = name[:13]  # a pack this process may not read: its creation, to be safe
            if created.isdigit():
                oldest = int(created) if oldest is None else min(oldest, int(created))
            continue
        for task_id, _ in records(data, settled(data)):
            with contextlib.suppress(ValueError):
                at_ms = int(task_id[:12], 16)
                oldest = at_ms if oldest is None else min(oldest, at_ms)
    return oldest
