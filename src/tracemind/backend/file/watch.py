"""Waking an idle consumer when a directory gains an entry: Linux inotify, else a plain sleep.

Only a hint: callers always look again after waking, and never wait longer than their own
timeout, so a file system that delivers no events (a network share, Docker Desktop's file
sharing) costs latency, not correctness. inotify sees renames made by any process on this
kernel, including a container and its host sharing a bind mount.
"""

from __future__ import annotations

import contextlib
import os
import select
import time

from tracemind.libc import libc

IN_ATTRIB = 0x00000004
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000


class DirectoryWatch:
    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.fd: int | None = None
        lib = libc()
        if lib is None:
            return
        with contextlib.suppress(AttributeError):
            fd = int(lib.inotify_init1(IN_NONBLOCK | IN_CLOEXEC))
            if fd < 0:
                return
            if (
                int(
                    lib.inotify_add_watch(
                        fd, os.fsencode(directory), IN_CREATE | IN_MOVED_TO | IN_ATTRIB
                    )
                )
                < 0
            ):
                os.close(fd)
                return
            self.fd = fd

    def wait(self, timeout_s: float) -> None:
        """Return when an entry was added since the last call, or after ``timeout_s``."""
        if timeout_s <= 0:
            return
        if self.fd is None:
            time.sleep(timeout_s)
            return
        ready, _, _ = select.select([self.fd], [], [], timeout_s)
        if ready:
            with contextlib.suppress(BlockingIOError):
                while os.read(self.fd, 65536):
                    pass

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
