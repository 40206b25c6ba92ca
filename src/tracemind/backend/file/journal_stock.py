"""Journals made in runs, unnamed, for the packs a writer makes ahead.

On ext4 without a journal, every ``fdatasync`` also writes the file's block of the inode table
(16 inodes) when that block is dirty, whichever inode dirtied it: one more write, waited for,
50 to 80 µs on the disks measured (docs/benchmarks.md, "A journal away from its pack"). A file's
inode goes in the lowest free slot of its directory's group, so a pack and a journal created one
after the other share a block; then each task linked to the pack (its link count changes)
makes the next flush of the journal write that block too. A bucket directory made meanwhile
can land beside them as well.

So the journals of the packs a writer makes ahead come from a stock made :data:`RUN` at a
time: the run's inodes fill slots next to each other, and a journal's neighbours are mostly
journals, which change only when written; the pack its records are linked to is ~16 slots
away (see :meth:`JournalStock.take`), and a bucket directory made while it is in use further
still (one made just before the run can still share a block with its first journals). Each
journal is an unnamed file (``O_TMPFILE``, in ``packs/``), so a writer that dies leaves none
behind; it gets its ``packs/`` name once it has a pack. Where unnamed files cannot be made or
named, the writer makes each journal beside its pack, as before.
"""

from __future__ import annotations

import errno
import os

from tracemind.fsutil import create_with_mode, write_at

RUN = 16
"""Journals made at once: a block of the inode table's worth (256-byte inodes in 4 KiB)."""


class JournalStock:
    """Unnamed journals of one writer process, their room written (not yet durable)."""

    def __init__(self, packs_dir: str) -> None:
        self.packs_dir = packs_dir
        self._fds: list[int] = []
        self._pid = os.getpid()
        self._room = b""
        self._supported = True

    def take(self, room: bytes) -> int | None:
        """An unnamed journal holding ``room``, or None where unnamed files cannot be made or
        named here. Raises ``OSError``.

        When the stock is empty a run is made, and the journal taken is the run's last: the
        pack it is for was created just before the run, ~16 slots away. The next packs are
        created after the run, so they take the run's journals first made first: each is
        then ~16 slots from its pack, and further from any directory made meanwhile."""
        if self._pid != os.getpid() or room != self._room:  # (a child made by fork: its
            self.close()  # parent's are not its to use; or another room size)
            self._pid, self._room = os.getpid(), room
        if not self._supported:
            return None
        if self._fds:
            return self._fds.pop(0)
        run = self._make_run(room)
        if not run:
            return None
        self._fds = run
        return run.pop()

    def name(self, fd: int, path: str) -> bool:
        """Give the unnamed journal ``fd`` (taken from this stock) the name ``path``. False
        where this system cannot name it (no ``/proc``): ``fd`` is then closed, and so on any
        error (raised: ``OSError``)."""
        try:
            parent = os.open(os.path.dirname(path), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except BaseException:
            os.close(fd)
            raise
        try:
            # (linkat with AT_SYMLINK_FOLLOW, which os.link uses only given a directory fd)
            os.link(f"/proc/self/fd/{fd}", os.path.basename(path), dst_dir_fd=parent)
            return True
        except OSError as exc:
            os.close(fd)
            if exc.errno in _UNNAMEABLE and not os.path.lexists(path):
                self._supported = False
                return False
            raise
        finally:
            os.close(parent)

    def close(self) -> None:
        """Close the journals left (unnamed: they vanish once no process holds them; a child
        made by ``fork`` closes only its own copies)."""
        fds, self._fds = self._fds, []
        for fd in fds:
            os.close(fd)

    def _make_run(self, room: bytes) -> list[int]:
        fds: list[int] = []
        try:
            for _ in range(RUN):
                fds.append(self._make_one(room))
        except OSError as exc:
            for fd in fds:
                os.close(fd)
            if exc.errno not in _UNSUPPORTED:
                raise
            self._supported = False
            return []
        return fds

    def _make_one(self, room: bytes) -> int:
        # (not create_exclusive: O_EXCL with O_TMPFILE would make the file unlinkable)
        fd = create_with_mode(self.packs_dir, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC)
        try:
            write_at(fd, room, 0)
        except BaseException:
            os.close(fd)
            raise
        return fd


_UNNAMEABLE = frozenset({errno.ENOENT, errno.EACCES, errno.EPERM, errno.ENOTDIR})
"""What linking ``/proc/self/fd/N`` says where ``/proc`` is missing or closed to us."""

_UNSUPPORTED = frozenset({errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL})
"""What ``open`` says where a file system (or kernel) cannot make unnamed files."""
