"""Group commit for durable acks: one flush for every ack that arrived while the previous ran.

An ack first appends its completion line to the task's file in ``inflight/``, which no crash of
the acking process can undo. The committer then makes that line durable and only afterwards
renames the file into ``done/``, where readers first see the task as succeeded. So no reader
reports a success that a power loss could take back, and under load many acks share one device
flush, as in a database's group commit, instead of paying a flush (or two) each.

Batches form by themselves: an ack that finds the committer idle is committed at once, and
acks that arrive while acks are streaming in (a backlog being drained) are gathered for up to
``GATHER_S`` first, so that one flush serves many. The commit thread lives as long as the
process (a daemon thread; a normal exit commits first): an ack it had not committed when the
process died is still in ``inflight/`` with its completion line, and the next writer to meet
the file (recovery or a lease) finishes it rather than running it again.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
import time
from collections.abc import Callable

from tracemind.fsutil import ensure_dir, fdatasync_file, rename_into, sync_filesystem
from tracemind.log import get_logger

GATHER_S = 0.005
"""While acks stream in (the last commit ended less than this ago), wait up to this long for
more before syncing, so that one flush serves many: the latency an ack may gain under load."""
GATHER_MAX = 256
"""Commit at once when this many acks are waiting (or when someone calls ``flush``)."""
Move = tuple[str, str]
"""(source, target) paths of one committed ack: its inflight file and its done file."""


class GroupCommitter:
    """Syncs, then renames, every queued move; ``flush`` waits for the moves queued before it.

    ``on_error(path, exc)`` is told about a move that failed, unless someone else finished the
    task already: a failed sync or rename leaves the ack in ``inflight/`` with its completion
    line, to be finished by recovery; a file gone (ENOENT) without a done record means a
    recovery took it after the lease lapsed.
    """

    def __init__(
        self, fs_dir: str | os.PathLike[str], on_error: Callable[[str, OSError], None]
    ) -> None:
        self._log = get_logger("tracemind.queue")
        self.fs_dir = fs_dir
        self.on_error = on_error
        self._changed = threading.Condition(threading.Lock())
        self._queued: list[Move] = []
        self._queued_count = 0
        self._committed_count = 0
        self._flush_goal = 0
        self._thread: threading.Thread | None = None

    def add(self, source: str, target: str) -> None:
        with self._changed:
            self._queued.append((source, target))
            self._queued_count += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="ack-commit", daemon=True)
                self._thread.start()
                atexit.register(self.flush)  # a process that exits normally commits first
            if len(self._queued) in (1, GATHER_MAX):  # wake the thread only when it acts on it
                self._changed.notify_all()

    def flush(self) -> None:
        with self._changed:
            goal = self._queued_count
            self._flush_goal = max(self._flush_goal, goal)
            self._changed.notify_all()
            while self._committed_count < goal:
                self._changed.wait()

    def _run(self) -> None:
        last_commit_s = float("-inf")
        while True:
            with self._changed:
                while not self._queued:
                    self._changed.wait()
                if time.monotonic() - last_commit_s < GATHER_S:  # acks are streaming in
                    self._changed.wait_for(self._gathered, GATHER_S)
                batch, self._queued = self._queued, []
            try:
                if self._commit(batch):
                    self._log.info("acks committed", count=len(batch))
            except Exception:  # keep the thread alive, or every later flush() would hang
                self._log.exception("ack commit failed; recovery will finish these acks")
            finally:
                last_commit_s = time.monotonic()
                with self._changed:
                    self._committed_count += len(batch)
                    self._changed.notify_all()

    def _gathered(self) -> bool:
        return len(self._queued) >= GATHER_MAX or self._flush_goal > self._committed_count

    def _commit(self, batch: list[Move]) -> bool:
        """Sync, then move each file into place; False when the sync failed."""
        try:
            self._sync([source for source, _ in batch])
        except OSError as exc:  # nothing is known durable: leave every ack to recovery
            for source, _ in batch:
                self.on_error(source, exc)
            return False
        for source, target in batch:
            try:
                rename_into(source, target, ensure_dir)  # (a done bucket is made on first use)
            except FileNotFoundError as exc:
                # Normally finished already, by a recovery or a lease that met the completion
                # line; if not, a recovery took the file away (the lease had lapsed).
                if not os.path.exists(target):
                    self.on_error(source, exc)
            except OSError as exc:
                self.on_error(source, exc)
        return True

    def _sync(self, paths: list[str]) -> None:
        """Make the appended lines durable: one ``syncfs``, else one ``fdatasync`` per file."""
        if sync_filesystem(self.fs_dir):
            return
        for path in paths:
            with contextlib.suppress(FileNotFoundError):  # finished elsewhere meanwhile
                fdatasync_file(path)
