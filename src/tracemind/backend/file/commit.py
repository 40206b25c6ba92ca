"""Group commit for durable acks: one flush for every ack that arrived while the previous ran.

An ack first appends its completion line to the task's file in ``inflight/``, which no crash of
the acking process can undo. The committer then makes that line durable and only afterwards
renames the file into ``done/``, where readers first see the task as succeeded. So no reader
reports a success that a power loss could take back, and under load many acks share one flush,
as in a database's group commit, instead of paying a flush (or two) each: the acks of a group
whose tasks share a pack (a batch, drained in order) cost one ``fdatasync`` of that pack.

Batches form by themselves, and the acking thread never waits for a flush:

- an ack that finds the process quiet (no commit for ``GATHER_S``) is synced and renamed at
  once by the commit thread;
- while acks stream in (a backlog being drained), the commit thread syncs every ack queued
  once the oldest has waited ``GATHER_S``, so one flush serves many, and leaves the renames to
  the acking thread, which makes them before it looks for its next task
  (:meth:`GroupCommitter.commit_due`): one thread renames while the other syncs, instead of
  both competing for the interpreter on every rename;
- synced acks that no one renamed for ``LATE_S`` (their consumer runs a long task) are renamed
  by the commit thread.

The commit thread lives as long as the process (a daemon thread; a normal exit commits first):
an ack not committed when the process died is still in ``inflight/`` with its completion line,
and the next writer to meet the file (recovery or a lease) finishes it rather than running it
again.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
from collections.abc import Callable

from tracemind.fsutil import ensure_dir, rename_into
from tracemind.log import get_logger
from tracemind.threads import start_helper_thread

GATHER_S = 0.005
"""While acks stream in (the last commit ended less than this ago), the oldest waits up to this
long for more before they are synced together: the latency an ack may gain under load."""
LATE_S = 2 * GATHER_S
"""How long synced acks wait for their acking thread before the commit thread renames them."""
GATHER_MAX = 256
"""Sync at once when this many acks are waiting."""
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

    def __init__(self, on_error: Callable[[str, OSError], None]) -> None:
        self._log = get_logger("tracemind.queue")
        self.on_error = on_error
        self._changed = threading.Condition(threading.Lock())
        self._renaming = threading.Lock()
        """Held while moves are renamed: a flush that takes it finds every earlier rename
        done."""
        self._queued: list[Move] = []
        """Moves appended and not yet synced ..."""
        self._files: dict[tuple[int, int], int] = {}
        """... the files they are in, open, by (device, inode) ..."""
        self._oldest_s = 0.0  # monotonic: when the oldest of them was queued
        self._syncing = 0
        """... syncs in progress (of moves taken from ``_queued``) ..."""
        self._synced: list[Move] = []
        """... and moves synced, to be renamed."""
        self._synced_s = 0.0  # monotonic: when the oldest of those was synced
        self._last_commit_s = float("-inf")  # monotonic: when the last renames ended
        self._thread: threading.Thread | None = None

    def add(self, source: str, target: str, fd: int) -> None:
        """Queue the move of ``source`` to ``target`` once the lines appended to it are durable;
        ``fd`` is the file open (the committer closes it), flushed once for all the moves
        queued with it that share the file (the tasks of one pack)."""
        info = os.fstat(fd)
        with self._changed:
            if not self._queued:
                self._oldest_s = time.monotonic()
            self._queued.append((source, target))
            held = self._files.setdefault((info.st_dev, info.st_ino), fd)
            if self._thread is None:
                self._thread = start_helper_thread(self._run, "ack-commit")
                atexit.register(self.flush)  # a process that exits normally commits first
            if len(self._queued) in (1, GATHER_MAX):  # wake the thread only when it acts on it
                self._changed.notify_all()
        if held != fd:  # the file is queued open already: one descriptor is enough
            os.close(fd)

    def commit_due(self) -> None:
        """Rename the moves already synced (for the acking thread, between tasks); returns at
        once when there are none or a rename is in progress."""
        if self._synced and self._renaming.acquire(blocking=False):
            try:
                self._rename_synced()
            finally:
                self._renaming.release()

    def flush(self) -> None:
        """Commit every move queued before this call (waiting for a sync in progress)."""
        with self._changed:
            while self._syncing:
                self._changed.wait()
            batch, files = self._take_queued()
        if batch:
            self._sync_batch(batch, files)
        with self._renaming:
            self._rename_synced()

    def _run(self) -> None:
        while True:
            with self._changed:
                job = self._next_job()
                batch, files = self._take_queued() if job != "rename" else ([], [])
            try:
                if batch:
                    self._sync_batch(batch, files)
                if job != "sync":  # (a quiet process's ack is renamed at once, for its latency)
                    with self._renaming:
                        self._rename_synced()
            except Exception:  # keep the thread alive: the acks it left wait for a flush
                self._log.exception("ack commit failed; recovery will finish these acks")

    def _next_job(self) -> str:
        """Wait (holding ``_changed``) for the thread's next job: "sync" queued moves,
        "rename" synced ones that waited too long, or "commit" both (a quiet process)."""
        while True:
            now_s = time.monotonic()
            wake_s = float("inf")
            if self._synced:
                if now_s - self._synced_s >= LATE_S:
                    return "rename"
                wake_s = self._synced_s + LATE_S
            if self._queued:
                quiet = self._oldest_s - self._last_commit_s >= GATHER_S  # when it came
                due_s = self._oldest_s + (0.0 if quiet else GATHER_S)
                if now_s >= due_s or len(self._queued) >= GATHER_MAX:
                    return "commit" if quiet else "sync"
                wake_s = min(wake_s, due_s)
            self._changed.wait(None if wake_s == float("inf") else wake_s - now_s)

    def _take_queued(self) -> tuple[list[Move], list[int]]:
        """The queued moves and their open files, now being synced by the caller (holding
        ``_changed``)."""
        batch, self._queued = self._queued, []
        files, self._files = list(self._files.values()), {}
        self._syncing += bool(batch)
        return batch, files

    def _sync_batch(self, batch: list[Move], files: list[int]) -> None:
        """Sync ``files`` (closing them), then hand ``batch`` on to be renamed; on failure,
        report every move of it (nothing is known durable: each ack is left to recovery)."""
        synced = False
        try:
            self._sync(files)
            synced = True
        except OSError as exc:
            for source, _ in batch:
                self.on_error(source, exc)
        except Exception:  # keep the committer usable, or every later flush() would wait
            self._log.exception("ack commit failed; recovery will finish these acks")
        finally:
            with self._changed:
                if synced:
                    if not self._synced:
                        self._synced_s = time.monotonic()
                    self._synced.extend(batch)
                self._syncing -= 1
                self._changed.notify_all()
            for fd in files:
                os.close(fd)

    def _rename_synced(self) -> None:
        """Move every synced file into place (the caller holds ``_renaming``)."""
        with self._changed:
            batch, self._synced = self._synced, []
        if not batch:
            return
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
        self._last_commit_s = time.monotonic()
        self._log.info("acks committed", count=len(batch))

    def _sync(self, files: list[int]) -> None:
        """Make the appended lines durable: one ``fdatasync`` per file (the tasks of one pack
        share it). Not a ``syncfs``: that also waits for everything other processes wrote to
        the file system, and an ack waited ~0.6 s for a process rewriting a big file
        (docs/benchmarks.md)."""
        for fd in files:
            os.fdatasync(fd)
