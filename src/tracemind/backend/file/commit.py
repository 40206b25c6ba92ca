"""Group commit for durable acks: one flush for every ack that arrived while the previous ran.

An ack first appends its completion line to the task's file in ``inflight/``, which no crash of
the acking process can undo. The committer then makes that line durable and only afterwards
renames the file into ``done/``, where readers first see the task as succeeded. So no reader
reports a success that a power loss could take back, and under load many acks share one device
flush, as in a database's group commit, instead of paying a flush (or two) each.

Batches form by themselves. An ack that finds the process quiet (no commit for ``GATHER_S``) is
committed at once, by the commit thread. While acks stream in (a backlog being drained), the
acking thread commits them itself once the oldest has waited ``GATHER_S`` (it asks, through
:meth:`GroupCommitter.commit_due`, before it looks for its next task), so one flush serves many
and no second thread competes with it for the interpreter on every rename; the commit thread
steps in only for acks still waiting after ``LATE_S`` (their consumer is running a long task).
Commits never overlap, and each takes every ack queued before it.

The commit thread lives as long as the process (a daemon thread; a normal exit commits first):
an ack not committed when the process died is still in ``inflight/`` with its completion line,
and the next writer to meet the file (recovery or a lease) finishes it rather than running it
again.
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
"""While acks stream in (the last commit ended less than this ago), the oldest waits up to this
long for more before they are synced together: the latency an ack may gain under load."""
LATE_S = 2 * GATHER_S
"""How long the oldest ack waits for its acking thread before the commit thread commits it."""
GATHER_MAX = 256
"""Commit at once when this many acks are waiting (or when someone calls ``flush``)."""
Move = tuple[str, str]
"""(source, target) paths of one committed ack: its inflight file and its done file."""


class GroupCommitter:
    """Syncs, then renames, every queued move; ``flush`` returns once the moves queued before
    it are committed.

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
        self._committing = threading.Lock()
        """Held for a whole commit: commits never overlap, so one that takes the queue after
        another took its part finishes after it."""
        self._queued: list[Move] = []
        self._oldest_s = 0.0  # monotonic: when the oldest queued move was queued
        self._last_commit_s = float("-inf")  # monotonic: when the last commit ended
        self._thread: threading.Thread | None = None

    def add(self, source: str, target: str) -> None:
        with self._changed:
            if not self._queued:
                self._oldest_s = time.monotonic()
            self._queued.append((source, target))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="ack-commit", daemon=True)
                self._thread.start()
                atexit.register(self.flush)  # a process that exits normally commits first
            if len(self._queued) == 1:  # wake the thread only when it acts on it
                self._changed.notify_all()
            full = len(self._queued) >= GATHER_MAX
        if full:
            self.flush()

    def commit_due(self) -> None:
        """Commit what is queued if its oldest waited :data:`GATHER_S` (for the acking thread,
        between tasks); returns at once when nothing is due or a commit is in progress."""
        if not self._queued or time.monotonic() - self._oldest_s < GATHER_S:
            return
        if self._committing.acquire(blocking=False):
            try:
                self._commit_queued()
            finally:
                self._committing.release()

    def flush(self) -> None:
        """Commit every move queued before this call (waiting for a commit in progress)."""
        with self._committing:
            self._commit_queued()

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._queued:
                    self._changed.wait()
                now_s = time.monotonic()
                quiet = now_s - self._last_commit_s >= GATHER_S
                due_s = self._oldest_s + (0.0 if quiet else LATE_S)
                if now_s < due_s:
                    self._changed.wait(due_s - now_s)
                    continue  # (committed meanwhile by the acking thread, perhaps)
            with self._committing:
                self._commit_queued()

    def _commit_queued(self) -> None:
        """Commit every queued move (the caller holds ``_committing``)."""
        with self._changed:
            batch, self._queued = self._queued, []
        if not batch:
            return
        try:
            if self._commit(batch):
                self._log.info("acks committed", count=len(batch))
        except Exception:  # keep the committer usable, or every later flush() would fail
            self._log.exception("ack commit failed; recovery will finish these acks")
        finally:
            self._last_commit_s = time.monotonic()

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
