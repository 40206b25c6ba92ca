"""Reading one task's lines out of its pack without reading the whole pack for every task.

A consumer claims the tasks of a pack one after another (their names sort together), and
:func:`~tracemind.backend.file.packs.task_bytes` over the whole pack reads and searches up to
64 KiB and more for each: ~20 µs of a claim. :class:`PackReader` reads a pack whole once, notes
where each record line lies, and from then on reads three small ranges of it per task: its
head, the task's record line and what was appended after the room (completions, cancel
stamps). Every range is read from the file as it is now, and is used only once checked:

- the pack's head (its header, then the task id of its first record) must be the one the index
  was made from: a task's record is written once, into one pack, so a pack that reused the
  inode of a removed one starts with another task (or another header);
- the record line must start with this task's id and end where the index says it does.

A record is never rewritten once written (a pack's room only grows), so a line that passes both
checks is the task's record in this file. Anything else (a task the index does not know: its
writer added it after the index was made; a torn line; a file that is not a pack) is read the
old way, whole, and the index is made again from it.

A backlog that waited long enough is no longer in the page cache (the kernel, or a host that
takes back memory a guest left unused, drops it), so the first read of each pack waits for the
disk. :meth:`PackReader.prefetch` asks the kernel to start reading the packs of the tasks a
consumer will claim next while it runs the ones it has.
"""

from __future__ import annotations

import os

from tracemind.backend.file.packs import MAGIC, header, task_bytes
from tracemind.fsutil import MAX_RECORD_BYTES, DamagedEntry, open_regular, read_fd

PACKS_REMEMBERED = 8
"""Indexes kept (one per pack, the most recently read): enough for the packs a consumer claims
from at once, a few KiB each."""
TAIL_READ_BYTES = 64 * 1024
"""What one read after a pack's room asks for (its acks and stamps: ~140 bytes a task)."""
PREFETCHES_REMEMBERED = 64
"""Packs whose reading ahead was asked for, remembered so that it is asked once each."""


class _Index:
    """Where the records of one pack lie (a plain class: ``tm enqueue`` loads this module, and
    no dataclasses)."""

    __slots__ = ("head", "records", "room")

    def __init__(self, head: bytes, room: int, records: dict[str, tuple[int, int] | None]) -> None:
        self.head = head
        """The pack's first bytes: its header line, then its first record's tag and task id."""
        self.room = room
        """The room its header states (0: not stated)."""
        self.records = records
        """Task id → (offset of the newline that starts its record line, offset of the newline
        that ends it), for the first record line of each task in the room; None when that line
        is torn."""


class PackReader:
    """:func:`~tracemind.backend.file.packs.task_bytes` for a file open at a descriptor, with
    the offsets of the packs read last remembered (see the module). Serves one thread."""

    def __init__(self) -> None:
        self._indexes: dict[tuple[int, int], _Index] = {}
        self._prefetched: dict[tuple[int, int], None] = {}  # (an ordered set, oldest first)
        self.packs_read = 0
        """Packs read whole so far (a task of a pack not indexed, or one its index failed)."""

    def task_bytes(self, fd: int, path: str, task_id: str) -> bytes:
        """The task's lines as :func:`~tracemind.backend.file.packs.task_bytes` returns them
        from the whole file open at ``fd`` (at ``path``, named in errors); raises what
        :func:`~tracemind.fsutil.read_fd` raises."""
        info = os.fstat(fd)
        file_id = (info.st_dev, info.st_ino)
        index = self._indexes.get(file_id)
        if index is not None and info.st_size <= MAX_RECORD_BYTES:
            found = _indexed_task_bytes(fd, path, index, task_id)
            if found is not None:
                return found
        data = read_fd(fd, path)
        self.packs_read += 1
        self._indexes.pop(file_id, None)
        if data.startswith(MAGIC):
            if len(self._indexes) >= PACKS_REMEMBERED:
                del self._indexes[next(iter(self._indexes))]
            self._indexes[file_id] = _index_of(data)
        return task_bytes(data, task_id)

    def prefetch(self, path: str) -> None:
        """Ask the kernel to read the file at ``path`` (a task's name: a link to its pack) into
        the page cache in the background, unless this reader indexed it or asked before. Never
        blocks on the entry (:func:`~tracemind.fsutil.open_regular`) nor waits for the disk; a
        name gone (claimed meanwhile) or not readable is left alone."""
        try:
            fd = open_regular(path)
        except (OSError, DamagedEntry):
            return
        try:
            info = os.fstat(fd)
            file_id = (info.st_dev, info.st_ino)
            if file_id in self._indexes or file_id in self._prefetched:
                return
            if len(self._prefetched) >= PREFETCHES_REMEMBERED:
                del self._prefetched[next(iter(self._prefetched))]
            self._prefetched[file_id] = None
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass  # (only a hint)
        finally:
            os.close(fd)


def _index_of(data: bytes) -> _Index:
    room = header(data)[1]
    limit = room or len(data)  # (where task_bytes looks for records)
    head = data[: data.find(b"\n") + 1]
    records: dict[str, tuple[int, int] | None] = {}
    pos = len(MAGIC)
    while (start := data.find(b"\nR ", pos, limit)) >= 0:
        id_end = data.find(b" ", start + 3, limit)
        end = data.find(b"\n", start + 1)
        end = len(data) if end < 0 else end
        if id_end < 0:
            break
        pos = end
        if id_end < end:
            whole = end < len(data) and data[end - 1 : end] == b"}"
            if not records:
                head = data[: id_end + 1]
            task_id = data[start + 3 : id_end].decode(errors="replace")
            records.setdefault(task_id, (start, end) if whole else None)
    return _Index(head, room, records)


def _indexed_task_bytes(fd: int, path: str, index: _Index, task_id: str) -> bytes | None:
    """The task's lines read through ``index``; None when the index cannot vouch for them."""
    span = index.records.get(task_id)
    if span is None or os.pread(fd, len(index.head), 0) != index.head:
        return None
    start, end = span
    line = os.pread(fd, end - start + 1, start)
    prefix = b"\nR " + task_id.encode() + b" "
    if not line.startswith(prefix) or line[-1:] != b"\n" or len(line) != end - start + 1:
        return None
    tag_end = line.find(b" ", len(prefix))
    if tag_end < 0:
        return None
    parts = [line[tag_end + 1 : -1]]
    tail_start = max(end, index.room - 1)
    tail = _read_from(fd, path, tail_start)
    marker = b"\nA " + task_id.encode() + b" "
    pos = 0
    while (pos := tail.find(marker, pos)) >= 0:
        line_end = tail.find(b"\n", pos + 1)
        line_end = len(tail) if line_end < 0 else line_end
        parts.append(tail[pos + len(marker) : line_end])
        pos = line_end
    return b"\n".join(parts) + b"\n"


def _read_from(fd: int, path: str, offset: int) -> bytes:
    """Everything from ``offset`` to the end of the file (which may grow while it is read)."""
    chunks = []
    total = offset
    while chunk := os.pread(fd, TAIL_READ_BYTES, total):
        total += len(chunk)
        if total > MAX_RECORD_BYTES:
            raise DamagedEntry(f"{path}: more than the {MAX_RECORD_BYTES} bytes a record may hold")
        chunks.append(chunk)
        if len(chunk) < TAIL_READ_BYTES:  # a regular file reads short only at its end
            break
    return b"".join(chunks)
