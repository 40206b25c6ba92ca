"""Waking a waiter when a task may have finished, instead of polling the queue.

Terminal records land in a few directories (the queue's ``done/``, the dead-letter store); an
inotify watch on each (:class:`tracemind.backend.file.watch.DirectoryWatch`) wakes the waiter when an
entry arrives, from any process on this kernel. Only a hint, like the watch itself: the waiter
looks again after every wake and at least every :data:`RECHECK_S`, so a file system without
events (a network share) or a directory that appears later costs latency, never a missed task.
"""

from __future__ import annotations

import contextlib
import os
import select
import time

from tracemind.backend.file.watch import DirectoryWatch

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

RECHECK_S = 1.0
"""Longest sleep while every directory is watched (a safety net for lost events)."""
POLL_S = 0.1
"""Longest sleep while some directory cannot be watched (absent, or no inotify)."""


class TerminalWatch:
    """Watches ``directories``; :meth:`wait` returns when an entry arrives in one of them, or
    after its timeout. Create it *before* looking at the tasks, so nothing arriving between the
    look and the wait is missed."""

    def __init__(self, directories: Sequence[str | os.PathLike[str]]) -> None:
        self._directories = [os.path.abspath(d) for d in directories]
        self._watches: dict[str, DirectoryWatch] = {}
        """Watched path → its watch: a directory, or the parent of one that does not exist
        yet (whose creation then wakes the waiter)."""
        self._arm()

    def _arm(self) -> bool:
        """Watch what can be watched now; True when a directory gained its own watch."""
        armed = False
        for directory in self._directories:
            if directory not in self._watches and os.path.isdir(directory):
                armed |= self._watch(directory)
        stand_ins = {os.path.dirname(d) for d in self._directories if d not in self._watches}
        for parent in stand_ins:
            if os.path.isdir(parent):
                self._watch(parent)
        for path in [p for p in self._watches if p not in self._directories]:
            if path not in stand_ins:  # its directory exists and has its own watch now
                self._watches.pop(path).close()
        return armed

    def _watch(self, path: str) -> bool:
        if path in self._watches:
            return False
        watch = DirectoryWatch(path)
        if watch.fd is None:
            return False
        self._watches[path] = watch
        return True

    @property
    def watching_all(self) -> bool:
        """Whether each directory, or the parent it will appear in, has a live watch."""
        return all(
            d in self._watches or os.path.dirname(d) in self._watches for d in self._directories
        )

    def wait(self, timeout_s: float) -> None:
        """Block until an entry arrives in a watched directory, or for at most ``timeout_s``
        (capped at :data:`RECHECK_S`, or :data:`POLL_S` while not watching all). Returns at
        once when a directory that did not exist gained its watch: the caller looks again."""
        if self._arm():
            return
        cap = RECHECK_S if self.watching_all else POLL_S
        timeout_s = min(timeout_s, cap)
        if timeout_s <= 0:
            return
        fds = [w.fd for w in self._watches.values() if w.fd is not None]
        if not fds:
            time.sleep(timeout_s)
            return
        ready, _, _ = select.select(fds, [], [], timeout_s)
        for fd in ready:
            with contextlib.suppress(BlockingIOError):
                while os.read(fd, 65536):
                    pass

    def close(self) -> None:
        for watch in self._watches.values():
            watch.close()
        self._watches.clear()

    def __enter__(self) -> TerminalWatch:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
