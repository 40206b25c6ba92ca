"""The idempotency store: which task an idempotency key belongs to, shared by every process.

Layout::

    <idempotency-dir>/keys/<sha256(key)[:40]>.json   {"key", "task_id", "created_at", "due_ms"}
    <idempotency-dir>/locks/<2 hex>.lock             256 striped cross-process locks
    <idempotency-dir>/tmp/

A key record only *points* at a task; whether the key still blocks a new submission is decided
from the task's state in the queue (see :mod:`tracemind.submit`). A submitter holds the stripe
locks of its keys from the moment it reads them until its tasks are visible, so the lock, not a
clock, says whether a claim is still being made: a submitter that dies releases its locks with
its last descriptor, and one that is paused keeps them (the others wait, then give up with
:class:`~tracemind.errors.LockTimeout`; none of them takes the key over).
"""

from __future__ import annotations

import contextlib
import os
from contextlib import ExitStack, contextmanager

from tracemind.backend.file.quarantine import quarantine
from tracemind.errors import LockTimeout, QueueError
from tracemind.fsutil import (
    dump_json,
    ensure_dir,
    file_mode,
    read_json,
    write_atomic,
    write_many_atomic,
)
from tracemind.values import Value

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from tracemind.fsutil import StrPath

LOCK_TIMEOUT_S = 10.0


class KeyRecord(Value):
    """``key`` points at ``task_id``, written at ``created_at``; ``due_ms`` is the task's due
    time as enqueued (None in records written before tasks were staged)."""

    __slots__ = ("created_at", "due_ms", "key", "task_id")

    def __init__(self, key: str, task_id: str, created_at: float, due_ms: int | None) -> None:
        self.key = key
        self.task_id = task_id
        self.created_at = created_at
        self.due_ms = due_ms

    def to_dict(self) -> dict[str, object]:
        return {
            "key": self.key,
            "task_id": self.task_id,
            "created_at": self.created_at,
            "due_ms": self.due_ms,
        }


class IdempotencyStore:
    def __init__(
        self, root: StrPath, *, durable: bool, lock_timeout_s: float = LOCK_TIMEOUT_S
    ) -> None:
        self.root = root
        self.durable = durable
        self.lock_timeout_s = lock_timeout_s

    @staticmethod
    def _digest(key: str) -> str:
        import hashlib  # only submissions with a key pay for it (OpenSSL, ~3 ms)

        return hashlib.sha256(key.encode()).hexdigest()[:40]

    @contextmanager
    def locked(self, key: str, *, timeout_s: float | None = None) -> Iterator[None]:
        """Hold the key's cross-process lock (raises LockTimeout after ``lock_timeout_s``)."""
        with self.locked_many([key], timeout_s=timeout_s):
            yield

    @contextmanager
    def locked_many(self, keys: Iterable[str], *, timeout_s: float | None = None) -> Iterator[None]:
        """Hold the locks of every key in ``keys`` (their stripes, taken in one global order so
        two batches never deadlock); raises LockTimeout when one is not acquired in time."""
        stripes = sorted({self._digest(key)[:2] for key in keys})
        if not stripes:
            yield
            return
        from filelock import FileLock, Timeout

        lock_dir = ensure_dir(os.path.join(self.root, "locks"))
        wait_s = self.lock_timeout_s if timeout_s is None else timeout_s
        with ExitStack() as held:
            for stripe in stripes:
                lock = FileLock(
                    os.path.join(lock_dir, f"{stripe}.lock"),
                    timeout=wait_s,
                    mode=file_mode(),
                    thread_local=False,
                )
                try:
                    lock.acquire()
                except Timeout:
                    raise LockTimeout(
                        f"idempotency key lock {lock.lock_file} not acquired within "
                        f"{wait_s:g} s (another process holds it, or is paused)"
                    ) from None
                except OSError as exc:  # after Timeout, which is an OSError too
                    raise QueueError(
                        f"{lock.lock_file}: cannot open the lock ({exc.strerror})"
                    ) from exc
                held.callback(lock.release)
            yield

    def _path(self, key: str) -> str:
        return os.path.join(self.root, "keys", f"{self._digest(key)}.json")

    def get(self, key: str) -> KeyRecord | None:
        """The record for ``key``; None when absent or damaged (a damaged record blocks nothing:
        torn, of the wrong shape, or not a regular file, which is never opened).

        A record this process may not read is no damage and is not taken as absent either (that
        would give the key a second task): :class:`QueueError` naming the fix."""
        path = self._path(key)
        try:
            data = read_json(path)
        except FileNotFoundError:
            return None
        except ValueError:
            return None
        except OSError as exc:
            from tracemind.backend.file.problems import unreadable_error

            raise unreadable_error(path, exc) from exc
        try:
            due_ms = data.get("due_ms")
            return KeyRecord(
                str(data["key"]),
                str(data["task_id"]),
                float(data["created_at"]),
                due_ms if isinstance(due_ms, int) and not isinstance(due_ms, bool) else None,
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            return None

    def put_many(self, records: Iterable[KeyRecord]) -> None:
        """Point each record's key at its task, durably when the store is (call while holding
        :meth:`locked_many` for those keys)."""
        items = [(self._path(r.key), dump_json(r.to_dict())) for r in records]
        if not items:
            return
        ensure_dir(os.path.join(self.root, "keys"))
        tmp_dir = ensure_dir(os.path.join(self.root, "tmp"))
        if len(items) == 1:
            write_atomic(*items[0], tmp_dir=tmp_dir, durable=self.durable)
        else:
            write_many_atomic(items, tmp_dir=tmp_dir, durable=self.durable)

    def put(self, key: str, task_id: str, now_s: float, due_ms: int | None = None) -> None:
        """Point ``key`` at ``task_id`` (call while holding :meth:`locked`)."""
        self.put_many([KeyRecord(key, task_id, now_s, due_ms)])

    def quarantine_damaged(self, key: str) -> bool:
        """Move the record of ``key`` aside if it exists but cannot be read (call while holding
        :meth:`locked`); True when it was moved."""
        path = self._path(key)
        if not os.path.lexists(path) or self.get(key) is not None:
            return False
        return quarantine(path, self.root, "unreadable idempotency key record") is not None

    def forget(self, key: str, task_id: str) -> None:
        """Remove the record of ``key`` if it points at ``task_id`` (call while holding
        :meth:`locked`)."""
        record = self.get(key)
        if record is not None and record.task_id == task_id:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path(key))
