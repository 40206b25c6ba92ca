"""The idempotency store: which task an idempotency key belongs to, shared by every process.

Layout::

    <idempotency-dir>/keys/<sha256(key)[:40]>.json   {"key", "task_id", "created_at"}
    <idempotency-dir>/locks/<2 hex>.lock             256 striped cross-process locks
    <idempotency-dir>/tmp/

A key record only *points* at a task; whether the key still blocks a new submission is decided
from the task's state in the queue (see :mod:`tracemind.submit`). Deciding and writing happen
under the key's stripe lock, so submissions racing each other from different processes agree.
"""

from __future__ import annotations

import contextlib
import os
from contextlib import contextmanager

from tracemind.errors import LockTimeout, QueueError
from tracemind.fsutil import dump_json, ensure_dir, file_mode, read_json, write_atomic
from tracemind.quarantine import quarantine
from tracemind.values import Value

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

    from tracemind.fsutil import StrPath

LOCK_TIMEOUT_S = 10.0


class KeyRecord(Value):
    __slots__ = ("created_at", "key", "task_id")

    def __init__(self, key: str, task_id: str, created_at: float) -> None:
        self.key = key
        self.task_id = task_id
        self.created_at = created_at


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
    def locked(self, key: str) -> Iterator[None]:
        """Hold the key's cross-process lock (raises LockTimeout after ``lock_timeout_s``)."""
        from filelock import FileLock, Timeout

        lock_dir = ensure_dir(os.path.join(self.root, "locks"))
        lock = FileLock(
            os.path.join(lock_dir, f"{self._digest(key)[:2]}.lock"),
            timeout=self.lock_timeout_s,
            mode=file_mode(),
            thread_local=False,
        )
        try:
            lock.acquire()
        except Timeout:
            raise LockTimeout(
                f"idempotency key lock {lock.lock_file} not acquired within "
                f"{self.lock_timeout_s:g} s (another process holds it, or is paused)"
            ) from None
        except OSError as exc:  # after Timeout, which is an OSError too
            raise QueueError(f"{lock.lock_file}: cannot open the lock ({exc.strerror})") from exc
        try:
            yield
        finally:
            lock.release()

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
            from tracemind.problems import unreadable_error

            raise unreadable_error(path, exc) from exc
        try:
            return KeyRecord(str(data["key"]), str(data["task_id"]), float(data["created_at"]))
        except (KeyError, TypeError, ValueError):
            return None

    def put(self, key: str, task_id: str, now_s: float, *, durable: bool | None = None) -> None:
        """Point ``key`` at ``task_id`` (call while holding :meth:`locked`); ``durable`` overrides
        the store's setting for callers that sync a whole batch themselves."""
        ensure_dir(os.path.join(self.root, "keys"))
        record = {"key": key, "task_id": task_id, "created_at": now_s}
        write_atomic(
            self._path(key),
            dump_json(record),
            tmp_dir=ensure_dir(os.path.join(self.root, "tmp")),
            durable=self.durable if durable is None else durable,
        )

    def quarantine_damaged(self, key: str) -> bool:
        """Move the record of ``key`` aside if it exists but cannot be read (call while holding
        :meth:`locked`); True when it was moved."""
        path = self._path(key)
        if not os.path.lexists(path) or self.get(key) is not None:
            return False
        return quarantine(path, self.root, "unreadable idempotency key record") is not None

    def release(self, key: str, task_id: str) -> None:
        """Forget ``key`` if it still points at ``task_id`` (its task was never enqueued)."""
        with self.locked(key):
            record = self.get(key)
            if record is not None and record.task_id == task_id:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._path(key))
