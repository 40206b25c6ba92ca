"""Packs: the records of many new tasks in one file, each task named by a hard link to it.

Creating a file costs an inode; on ext4 without a journal, just after other files were deleted,
that is ~0.5 ms each (docs/benchmarks.md, figure 11), while a hard link or a rename costs
~0.02 ms. So a writer does not create a file per task: it writes the records of its new tasks
into a *pack* it owns, makes them durable with one ``fdatasync``, and gives each task its name in
``pending/`` (or ``staging/``) as a hard link to the pack. From then on the task's name is all
that changes — claims, renews, retries and acks rename it as they rename a single-task file —
and readers take the task's own lines out of the pack (:func:`task_bytes`).

Format (one line each, every line written with a leading newline so that a line torn by a
crash never runs into the next one)::

    TMPACK 1 <boot id> <room bytes>    the header
    R <task id> <key digest or -> <record JSON>
    A <task id> <JSON>                 appended later: an ack's completion, a cancel stamp

A pack holds at most :data:`PACK_TASKS` records (and about :data:`PACK_BYTES`), so reading a
task from its pack costs the same at any depth.

**Durability.** When :meth:`PackWriter.add` returns, the records are durable (with a durable
queue) and every link is made, but the links' directory entries are not synced: a process that
dies keeps them (they are in the kernel's cache), only a power loss or a kernel crash can lose
them. For that, the pack keeps a second name in ``packs/`` (durable from its creation) while
its writer lives, with the boot id of its writing in its header. Its writer holds an
open-file-description lock on byte :data:`ALIVE_BYTE` for as long as it may add to it.

- :func:`checkpoint` (the daemon's upkeep, and before retention removes anything) takes every
  pack whose writer is gone (the lock is free: no clock decides it), syncs the file system —
  now every link those writers made is durable — and removes their ``packs/`` names.
- After a reboot (the boot id differs), a pack still in ``packs/`` may name tasks whose links
  were lost: :func:`checkpoint` hands each of its records to ``replay``, which links the ones
  found nowhere in the queue back into ``pending/``.
- So that a replay never brings back a task that was finished and then removed, retention
  removes only tasks enqueued before every record still in ``packs/``
  (:func:`oldest_unsettled_ms`).
"""

from __future__ import annotations

import _thread
import contextlib
import errno
import os
import stat
import struct
import time

from tracemind.backend.file.quarantine import quarantine
from tracemind.errors import QueueError
from tracemind.fsutil import (
    MAX_RECORD_BYTES,
    DamagedEntry,
    create_exclusive,
    ensure_dir,
    fsync_dir,
    open_regular,
    read_fd,
    read_regular,
    sync_filesystem,
    write_error,
)
from tracemind.queue.names import is_task_id

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

MAGIC = b"TMPACK 1 "
PACK_TASKS = 64
"""Most records in one pack: reading one task reads its pack, at most ~this many records."""
PACK_BYTES = 64 * 1024
"""The room of a pack (a bigger record gets a pack of its own, as big as it needs)."""
PACK_AGE_S = 60.0
"""A writer starts a new pack when its pack is this old, so that a pack stays in ``packs/``
(and holds retention back, see :func:`oldest_unsettled_ms`) for about this long at most."""
ALIVE_BYTE = 1
"""Held by a pack's writer for as long as it may add to the pack."""
REPLAY_BYTE = 0
"""Held by a process replaying the pack after a reboot."""
WRITING_BYTE = 2
"""Held by a pack's writer while it adds records (from the first write to the last link)."""
SUFFIX = ".pack"
JOURNAL_SUFFIX = ".journal"
NO_KEY = "-"
LINK_ATTEMPTS = 5


def boot_id() -> str:
    """This boot's id (the kernel's ``random/boot_id``; the same in a container and its host)."""
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as file:
            return file.read().decode().strip()[:36] or "unknown"
    except OSError:
        return "unknown"


def is_pack(data: bytes) -> bool:
    return data.startswith(MAGIC)


def task_bytes(data: bytes, task_id: str) -> bytes:
    """One task's file as a single-task file holds it — its record line, then the lines
    appended for it — from the bytes of a pack (any other file's bytes are returned as they
    are). ``b""`` when the pack holds no record of the task."""
    if not data.startswith(MAGIC):
        return data
    tid = task_id.encode()
    room = _header(data)[1]
    start = data.find(b"\nR " + tid + b" ", 0, room or len(data))
    if start < 0:
        return b""
    tag_end = data.find(b" ", start + 4 + len(tid))
    end = _line_end(data, tag_end)
    if tag_end < 0 or tag_end > end:
        return b""
    parts = [data[tag_end + 1 : end]]
    marker = b"\nA " + tid + b" "
    pos = max(end, room - 1)  # (appended lines come after the room)
    while (pos := data.find(marker, pos)) >= 0:
        line_end = _line_end(data, pos + 1)
        parts.append(data[pos + len(marker) : line_end])
        pos = line_end
    return b"\n".join(parts) + b"\n"


def _header(data: bytes) -> tuple[str, int]:
    """(boot id, room bytes) of a pack's header (room 0 when it does not say)."""
    fields = data[len(MAGIC) : data.find(b"\n")].split(b" ")
    room = fields[1] if len(fields) > 1 else b""
    return fields[0].decode(errors="replace"), int(room) if room.isdigit() else 0


def keyed_task_bytes(data: bytes, digest: str) -> bytes:
    """Like :func:`task_bytes`, for the task whose idempotency key has ``digest`` (the key
    record's name; a pack holds at most one record per key); ``b""`` when it holds none."""
    if not data.startswith(MAGIC):
        return data
    marker = b" " + digest.encode() + b" "
    pos = data.find(marker)
    while pos >= 0:
        line_start = data.rfind(b"\n", 0, pos) + 1
        if data[line_start : line_start + 2] == b"R " and pos - line_start == 24:
            return task_bytes(data, data[line_start + 2 : pos].decode())
        pos = data.find(marker, pos + 1)
    return b""


def records(data: bytes, after: int = 0) -> list[tuple[str, bytes]]:
    """(task id, record JSON) of every whole record line of a pack's bytes that starts at or
    after byte ``after``, in order (none when the bytes are not a pack's)."""
    return [(task_id, record) for _, task_id, record in _record_lines(data, after)]


def _record_lines(data: bytes, after: int = 0) -> list[tuple[int, str, bytes]]:
    """(end offset, task id, record JSON) of each whole record line from ``after`` on."""
    if not data.startswith(MAGIC):
        return []
    found = []
    pos = max(after, len(MAGIC))
    while (start := data.find(b"\nR ", pos)) >= 0:
        end = _line_end(data, start + 1)
        line = data[start + 1 : end]
        pos = end
        if not line.endswith(b"}"):
            continue  # torn
        task_id, _, rest = line[2:].partition(b" ")
        _, _, record = rest.partition(b" ")
        if is_task_id(name := task_id.decode(errors="replace")):
            found.append((end, name, record))
    return found


def settled(data: bytes) -> int:
    """Up to which byte a checkpoint found every record of the pack linked and durable (its
    ``S <offset>`` lines; 0 when none)."""
    offset = 0
    pos = 0
    while (start := data.find(b"\nS ", pos)) >= 0:
        end = _line_end(data, start + 1)
        value = data[start + 3 : end]
        if value.isdigit():
            offset = max(offset, int(value))
        pos = end
    return offset


def appended_line(data_head: bytes, task_id: str, line: bytes) -> bytes:
    """What to append to a task's file to add ``line`` for it, given the file's first bytes."""
    if data_head.startswith(MAGIC):
        return b"\nA " + task_id.encode() + b" " + line + b"\n"
    return b"\n" + line + b"\n"


def _line_end(data: bytes, pos: int) -> int:
    end = data.find(b"\n", pos)
    return len(data) if end < 0 else end


class PackWriter:
    """One process's packs of one queue: writes records, makes them durable, links them.

    A pack is created with its room already written (zeros, up to :data:`PACK_BYTES`; a first
    pack only as much as its first call needs, rounded up to a block, so that a one-task
    command does not leave a big file behind). Records are then written into that room at
    known offsets, so that the ``fdatasync`` after each one flushes data only: the file's size
    and blocks do not change, where an append would make every flush write the inode too.
    Lines appended for a task (acks, stamps) go after the room.

    Thread-safe; a child process made by ``fork`` starts packs of its own (it never writes
    to its parent's)."""

    def __init__(self, packs_dir: str, tmp_dir: str, *, durable: bool) -> None:
        self.packs_dir = packs_dir
        self.tmp_dir = tmp_dir
        self.durable = durable
        self._mutex = _thread.allocate_lock()
        self._fd = -1
        self._path = ""
        self._journal = -1
        """The current pack's journal (a durable queue only), or -1."""
        self._pid = 0
        self._tasks = 0
        self._at = 0
        """Where the next record goes (bytes from the start) ..."""
        self._room_end = 0
        """... and where the pack's room ends."""
        self._opened_s = 0.0
        self._opened_any = False
        self._locked_fds: list[int] = []
        self._digests: set[str] = set()
        """The key digests of the current pack's records: a key has at most one record in a
        pack, so that its key record (a link to the pack) names one task."""

    def add(
        self,
        items: Sequence[tuple[str, str | None, bytes, str]],
        remake_parent: Callable[[str], object],
    ) -> None:
        """For each ``(task id, idempotency key digest or None, record JSON, target)``: write
        the record into a pack, then (all records durable first, with a durable queue) make
        ``target`` a hard link to that pack. ``remake_parent`` makes a target's directory again
        when another process removed it. Raises :class:`QueueError`; a target already linked
        stays (the caller rolls back what it must)."""
        if not items:
            return
        lines = [
            b"\nR %s %s %s\n" % (task_id.encode(), (digest or NO_KEY).encode(), record)
            for task_id, digest, record, _ in items
        ]
        with self._mutex:
            self._lock_writing()
            placed: list[tuple[str, str]] = []  # (pack path, target)
            touched: dict[str, int] = {}  # pack path → the descriptor to sync (its journal's)
            full: list[int] = []  # packs this call filled: closed once their links are made
            made_pack = False
            left_bytes = sum(map(len, lines))
            try:
                for line, (_, digest, _, target) in zip(lines, items, strict=True):
                    made_pack |= self._room_for(len(line), left_bytes, full, digest)
                    if digest is not None:
                        self._digests.add(digest)
                    _write_at(self._fd, line, self._at)
                    if self._journal >= 0:
                        _write_at(self._journal, line, self._at)
                    self._at += len(line)
                    self._tasks += 1
                    left_bytes -= len(line)
                    touched[self._path] = self._journal
                    placed.append((self._path, target))
                self._make_durable(touched, made_pack)
                for pack, target in placed:
                    _link(pack, target, remake_parent)
            except OSError as exc:
                raise write_error(exc.filename or self.packs_dir, exc) from exc
            finally:
                self._unlock_writing(full)
                for fd in full:
                    os.close(fd)  # releases its alive lock: the next checkpoint retires it

    def _lock_writing(self) -> None:
        """Take the current pack's writing lock, held until the call's last link is made (a
        pack the call starts is locked as it is made)."""
        self._locked_fds = []
        if self._fd >= 0 and self._pid == os.getpid():
            _set_lock(self._fd, WRITING_BYTE, True)
            self._locked_fds.append(self._fd)

    def _unlock_writing(self, closing: list[int]) -> None:
        for fd in self._locked_fds:
            if fd not in closing:  # (closing it releases it)
                _set_lock(fd, WRITING_BYTE, False)
        self._locked_fds = []

    def close(self) -> None:
        """Let the current pack go (its ``packs/`` name then goes at the next checkpoint)."""
        with self._mutex:
            if self._fd >= 0 and self._pid == os.getpid():
                os.close(self._fd)  # releases the alive lock
                if self._journal >= 0:
                    os.close(self._journal)
            self._fd, self._path, self._journal = -1, "", -1

    def _room_for(
        self, line_bytes: int, left_bytes: int, full: list[int], digest: str | None
    ) -> bool:
        """Make sure the current pack has room for one more record of ``line_bytes`` with key
        ``digest`` (this call has ``left_bytes`` more to write, this one included); True when
        this started a new pack (the descriptor of the one it replaces goes to ``full``)."""
        if (
            self._fd >= 0
            and self._pid == os.getpid()
            and self._tasks < PACK_TASKS
            and self._at + line_bytes <= self._room_end
            and time.monotonic() - self._opened_s < PACK_AGE_S
            and digest not in self._digests
        ):
            return False
        if self._fd >= 0 and self._pid == os.getpid():
            full.append(self._fd)
            if self._journal >= 0:
                full.append(self._journal)
        self._fd, self._path, self._journal = -1, "", -1
        header_bytes = len(MAGIC) + 36 + 10  # the boot id, the room's size and the separators
        wanted = left_bytes if not self._opened_any else PACK_BYTES
        room = max(
            _blocks(header_bytes + line_bytes),
            min(PACK_BYTES, _blocks(header_bytes + wanted)),
        )
        self._open(MAGIC + b"%s %d\n" % (boot_id().encode(), room), room)
        return True

    def _open(self, header: bytes, room_bytes: int) -> None:
        """A new pack of ``room_bytes``: made in ``tmp/``, locked, written (its header, then
        zeros), then named in ``packs/`` (so a checkpoint never sees it unlocked while its
        writer lives); with a durable queue, its journal too (named after it)."""
        ensure_dir(self.packs_dir)
        name = f"{int(time.time() * 1000):013d}-{os.getpid()}-{os.urandom(6).hex()}"
        room = header + bytes(room_bytes - len(header))
        fd = self._make(name + SUFFIX, room, lock=True)
        journal = -1
        if self.durable:
            try:
                journal = self._make(name + JOURNAL_SUFFIX, room, lock=False)
            except BaseException:
                os.close(fd)
                raise
        self._locked_fds.append(fd)
        self._fd, self._path, self._pid = (
            fd,
            os.path.join(self.packs_dir, name + SUFFIX),
            os.getpid(),
        )
        self._journal = journal
        self._tasks, self._at, self._room_end = 0, len(header), room_bytes
        self._digests = set()
        self._opened_s, self._opened_any = time.monotonic(), True

    def _make(self, name: str, content: bytes, *, lock: bool) -> int:
        """Create ``packs/name`` holding ``content`` (made in ``tmp/`` and renamed, locked
        first when ``lock``); its open descriptor."""
        tmp = os.path.join(self.tmp_dir, name + ".tmp")
        fd = create_exclusive(tmp, os.O_RDWR | os.O_CLOEXEC)
        try:
            if lock:
                _lock_alive(fd)
                _set_lock(fd, WRITING_BYTE, True)
            _write_at(fd, content, 0)
            os.rename(tmp, os.path.join(self.packs_dir, name))
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return fd

    def _make_durable(self, touched: dict[str, int], made_pack: bool) -> None:
        if not self.durable:
            return
        if len(touched) == 1:
            os.fdatasync(next(iter(touched.values())))
            if made_pack:
                fsync_dir(self.packs_dir)
            return
        if not sync_filesystem(self.packs_dir):
            for fd in touched.values():
                os.fdatasync(fd)
            fsync_dir(self.packs_dir)


def _blocks(size: int) -> int:
    """``size`` rounded up to whole 4 KiB blocks."""
    return -(-size // 4096) * 4096


def _write_at(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _link(source: str, target: str, remake_parent: Callable[[str], object]) -> None:
    for attempt in range(LINK_ATTEMPTS):
        try:
            os.link(source, target)
            return
        except FileNotFoundError:
            if attempt == LINK_ATTEMPTS - 1 or not os.path.exists(source):
                raise
            remake_parent(os.path.dirname(target))


def _flock_struct(kind: int, byte: int = ALIVE_BYTE) -> bytes:
    # struct flock on 64-bit Linux: l_type, l_whence, l_start, l_len, l_pid (0 for OFD locks)
    return struct.pack("hhqqi4x", kind, os.SEEK_SET, byte, 1, 0)


def _lock_alive(fd: int) -> None:
    import fcntl

    if hasattr(fcntl, "F_OFD_SETLK"):
        _set_lock(fd, ALIVE_BYTE, True)
    else:  # not Linux: a flock on the whole file says the same
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _set_lock(fd: int, byte: int, locked: bool) -> None:
    import fcntl

    if hasattr(fcntl, "F_OFD_SETLK"):
        kind = fcntl.F_WRLCK if locked else fcntl.F_UNLCK
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _flock_struct(kind, byte))


def _held(fd: int, byte: int) -> bool:
    """Whether another open file description holds the lock on ``byte``; asks only."""
    import fcntl

    if not hasattr(fcntl, "F_OFD_GETLK"):
        return True  # (cannot tell: a live pack is never taken for settled)
    answer = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, _flock_struct(fcntl.F_WRLCK, byte))
    kind: int = struct.unpack("hhqqi4x", answer)[0]
    return kind != fcntl.F_UNLCK


def _lock_replay(fd: int) -> bool:
    """Take the replay lock of a pack whose writer is gone, without waiting; False when
    another process holds it."""
    import fcntl

    if not hasattr(fcntl, "F_OFD_SETLK"):
        return True  # (its writer's flock is gone: nothing else to tell replayers apart)
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _flock_struct(fcntl.F_WRLCK, REPLAY_BYTE))
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def writer_alive(fd: int) -> bool:
    """Whether some open file description (a live writer) holds the pack open at ``fd``'s
    alive lock; asks without taking anything."""
    import fcntl

    if hasattr(fcntl, "F_OFD_GETLK"):
        return _held(fd, ALIVE_BYTE)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return True
        raise
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


def _listing(packs_dir: str) -> list[str]:
    try:
        return os.listdir(packs_dir)
    except FileNotFoundError:
        return []


def _pack_names(packs_dir: str) -> list[str]:
    return sorted(n for n in _listing(packs_dir) if n.endswith(SUFFIX))


CHECKPOINT_PACKS = 1_000
"""Most packs one checkpoint looks at (the oldest first): its cost stays bounded however many
writers came and went since the last one; the next checkpoint takes the rest."""
HEADER_BYTES = 256
"""Enough of a pack to read its header."""


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
        listed = _listing(packs_dir)
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
                    head = _head(_journal_path(path))
                if not is_pack(head):
                    if not alive:
                        quarantine(path, os.path.dirname(packs_dir), "not a pack")
                    continue
                if alive:
                    mark = _settle_mark(fd, path)
                    if mark is not None:
                        marks.append(mark)
                    continue
                if _header(head)[0] != current:
                    if not _lock_replay(fd) or os.stat(path).st_ino != os.fstat(fd).st_ino:
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
            with contextlib.suppress(FileNotFoundError):
                os.unlink(_journal_path(path))  # (first: a pack never outlives its journal)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        _remove_orphan_journals(packs_dir, listed)
        return len(retired), replayed
    finally:
        for fd in replaying:
            os.close(fd)


def _settle_mark(fd: int, path: str) -> tuple[str, int] | None:
    """(where to append it, offset) of the mark that would settle a live writer's pack open
    at ``fd``; None when there is nothing new to settle, or its writer is writing."""
    journal, data = _journal_or(path, read_fd(fd, path))
    lines = _record_lines(data, settled(data))
    if not lines or _held(fd, WRITING_BYTE):  # (asked after the read)
        return None
    return journal or path, lines[-1][0]


def _journal_path(pack_path: str) -> str:
    return pack_path[: -len(SUFFIX)] + JOURNAL_SUFFIX


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
    path = _journal_path(pack_path)
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
                journal = read_regular(_journal_path(path))
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
