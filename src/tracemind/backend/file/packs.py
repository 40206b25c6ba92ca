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

**Durability.** When :meth:`~tracemind.backend.file.pack_writer.PackWriter.add` returns, the records are durable (with a durable
queue) and every link is made, but the links' directory entries are not synced: a process that
dies keeps them (they are in the kernel's cache), only a power loss or a kernel crash can lose
them. For that, the pack keeps a second name in ``packs/`` (durable from its creation) while
its writer lives, with the boot id of its writing in its header. Its writer holds an
open-file-description lock on byte :data:`ALIVE_BYTE` for as long as it may add to it.

- :func:`~tracemind.backend.file.pack_checkpoint.checkpoint` (the daemon's upkeep, and before
  retention removes anything) takes every
  pack whose writer is gone (the lock is free: no clock decides it), syncs the file system —
  now every link those writers made is durable — and removes their ``packs/`` names. A
  writer does the same for the packs it filled (without keyed records) right after its next
  sync of the file system (:class:`~tracemind.backend.file.pack_writer.PackWriter`).
- After a reboot (the boot id differs), a pack still in ``packs/`` may name tasks whose links
  were lost: the checkpoint hands each of its records to ``replay``, which links the ones
  found nowhere in the queue back into ``pending/``.
- So that a replay never brings back a task that was finished and then removed, retention
  removes only tasks enqueued before every record still in ``packs/``
  (:func:`~tracemind.backend.file.pack_checkpoint.oldest_unsettled_ms`).

This module holds the format, its readers and the byte locks; :mod:`.pack_writer` writes packs
and :mod:`.pack_checkpoint` settles them.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import struct

from tracemind.queue.names import is_task_id

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
    room = header(data)[1]
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


def header(data: bytes) -> tuple[str, int]:
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
    return [(task_id, record) for _, task_id, record in record_lines(data, after)]


def record_lines(data: bytes, after: int = 0) -> list[tuple[int, str, bytes]]:
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


@functools.cache
def _flock_struct(kind: int, byte: int = ALIVE_BYTE) -> bytes:
    # struct flock on 64-bit Linux: l_type, l_whence, l_start, l_len, l_pid (0 for OFD locks)
    return struct.pack("hhqqi4x", kind, os.SEEK_SET, byte, 1, 0)


def lock_alive(fd: int) -> None:
    import fcntl

    if hasattr(fcntl, "F_OFD_SETLK"):
        set_lock(fd, ALIVE_BYTE, True)
    else:  # not Linux: a flock on the whole file says the same
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def set_lock(fd: int, byte: int, locked: bool) -> None:
    import fcntl

    if hasattr(fcntl, "F_OFD_SETLK"):
        kind = fcntl.F_WRLCK if locked else fcntl.F_UNLCK
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _flock_struct(kind, byte))


def held(fd: int, byte: int) -> bool:
    """Whether another open file description holds the lock on ``byte``; asks only."""
    import fcntl

    if not hasattr(fcntl, "F_OFD_GETLK"):
        return True  # (cannot tell: a live pack is never taken for settled)
    answer = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, _flock_struct(fcntl.F_WRLCK, byte))
    kind: int = struct.unpack("hhqqi4x", answer)[0]
    return kind != fcntl.F_UNLCK


def lock_replay(fd: int) -> bool:
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
        return held(fd, ALIVE_BYTE)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return True
        raise
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


def journal_path(pack_path: str) -> str:
    """Where the journal of the pack at ``pack_path`` is (a durable queue's; see the module)."""
    return pack_path[: -len(SUFFIX)] + JOURNAL_SUFFIX


def retire(pack_path: str) -> None:
    """Remove a pack's ``packs/`` name and its journal, the journal first (a pack never
    outlives its journal); call once every link to the pack is durable. Either may be gone
    already (another process retired it)."""
    for path in (journal_path(pack_path), pack_path):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def append_line(path: str, task_id: str, line: bytes) -> None:
    """Append ``line`` for the task to its existing file (or pack) in one write (a crash
    cannot leave half of it without the other; a torn line after a power loss is ignored by
    readers)."""
    os.close(append_line_open(path, task_id, line))


def append_line_open(path: str, task_id: str, line: bytes) -> int:
    """:func:`append_line`, returning the file's descriptor, still open (the caller closes
    it): for a line made durable later."""
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
    try:
        os.write(fd, appended_line(os.pread(fd, len(MAGIC), 0), task_id, line))
    except BaseException:
        os.close(fd)
        raise
    return fd
