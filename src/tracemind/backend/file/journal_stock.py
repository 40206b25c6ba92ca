"""Journals made in runs, unnamed, for the packs a writer makes ahead.

On ext4 without a journal, every ``fdatasync`` also writes the file's block of the inode table
(16 inodes) when that block is dirty, whichever inode dirtied it: one more write, waited for,
80 to 120 µs on the disks measured (docs/benchmarks.md, "A journal away from its pack", "A
block of journals"). A new inode goes in the lowest free slot of its directory's group, so
whatever is created while a journal is made can land beside it: its own pack (each task
linked to the pack changes the pack's link count), the bucket directory of the current second
(each link changes the directory's times), the bell. Each then makes every flush of that
journal write the block too.

So the journals of the packs a writer makes ahead come from runs of unnamed files
(``O_TMPFILE``, in ``packs/``) made one after the other until the :data:`SLOTS` slots of one
block of the inode table are all theirs, or :data:`MADE_MAX` are made. That block's journals
are used first: while one is in use, its block changes only when the writer names the next
one or the journal's own time changes. The run's other files (made in free slots that older
files left, or before the block's first slot) are used after them, each ~16 slots or more from
the pack made just before the run. Every file made is used, so a run costs no more inode
creations a pack than one journal each. A file system that does not number new inodes one
after another gets runs of :data:`MADE_MAX`, the last made used first. Each journal stays
unnamed until it has a pack, so a writer that dies leaves none behind. Where unnamed files
cannot be made or named, the writer makes each journal beside its pack, as before.
"""

from __future__ import annotations

import errno
import os

from tracemind.fsutil import create_with_mode, write_at

SLOTS = 16
"""Inodes in one block of the inode table (ext4's default: 256-byte inodes in 4 KiB blocks)."""

MADE_MAX = 2 * SLOTS - 1
"""Most unnamed files made for one run: enough for one whole block where free slots follow one
another, and few enough to be made while the current pack's 64 calls go by where each costs
~0.5 ms (a disk that has just deleted files; the next pack should be ready by then)."""


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

        When the stock is empty a run is made (see the module); its journals are taken in the
        order :meth:`_make_run` gives."""
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
        return run.pop(0)

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
        """A run of unnamed journals holding ``room``, in the order to use them (see
        :meth:`_make_files`); [] where unnamed files cannot be made here."""
        made: dict[int, int] = {}
        try:
            run = self._make_files(made)
            for fd in run:
                write_at(fd, room, 0)
        except BaseException as exc:
            for fd in made.values():
                os.close(fd)
            if not isinstance(exc, OSError) or exc.errno not in _UNSUPPORTED:
                raise
            self._supported = False
            return []
        return run

    def _make_files(self, made: dict[int, int]) -> list[int]:
        """Make unnamed files into ``made`` (inode number → descriptor) until one whole block
        of the inode table is theirs, or :data:`MADE_MAX` are made; return their descriptors,
        that block's first (in order), then the others as made — or, with no whole block, the
        last made first (furthest from what was made before the run), then the others."""
        while len(made) < MADE_MAX:
            fd = self._make_one()
            try:
                inode = os.fstat(fd).st_ino
            except BaseException:
                os.close(fd)
                raise
            made[inode] = fd
            if block := _whole_block(made, inode):
                return block + [fd for fd in made.values() if fd not in block]
        fds = list(made.values())
        return fds[-1:] + fds[:-1]

    def _make_one(self) -> int:
        # (not create_exclusive: O_EXCL with O_TMPFILE would make the file unlinkable)
        return create_with_mode(self.packs_dir, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC)


def _whole_block(made: dict[int, int], inode: int) -> list[int]:
    """The descriptors of the block of :data:`SLOTS` inode numbers holding ``inode``, in
    order, when ``made`` holds every one of them; else []."""
    first = (inode - 1) // SLOTS * SLOTS + 1  # (inode numbers start at 1)
    block = [made.get(number) for number in range(first, first + SLOTS)]
    return [fd for fd in block if fd is not None] if None not in block else []


_UNNAMEABLE = frozenset({errno.ENOENT, errno.EACCES, errno.EPERM, errno.ENOTDIR})
"""What linking ``/proc/self/fd/N`` says where ``/proc`` is missing or closed to us."""

_UNSUPPORTED = frozenset({errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL})
"""What ``open`` says where a file system (or kernel) cannot make unnamed files."""
