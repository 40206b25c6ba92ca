"""The idempotency store: which task an idempotency key belongs to, shared by every process.

Layout::

    <idempotency-dir>/keys/<sha256(key)[:40]>.json   the key's task file (a hard link), or a record
    <idempotency-dir>/locks/stripes.lock            256 striped cross-process locks (one byte each)
    <idempotency-dir>/tmp/

A submitter points a key at its task by giving the task's file in ``pending/`` (a pack, see
:mod:`tracemind.backend.file.packs`) a second name in ``keys/`` (a hard link, see
:func:`~tracemind.fsutil.link_many`): one directory entry, no new file, never torn, and the
task record it holds (``task_id``, ``idempotency_key``, ``due_at``, ``enqueued_at``) is what
the key says. The two names share one file: an ack appends its completion line to it too,
which a key's reader ignores (it reads the first line). Where the idempotency directory is on
another file system than the queue, the key gets a copy instead. Records written by earlier
versions are small JSON files ``{"key", "task_id", "created_at", "due_ms"}`` and are still
read.

A key record only *points* at a task; whether the key still blocks a new submission is decided
from the task's state in the queue (see :mod:`tracemind.submit`). A submitter holds the stripe
locks of its keys from the moment it reads them until their records are written, so the lock,
not a clock, says whether a claim is still being made: a submitter that dies releases its locks
with its last descriptor, and one that is paused keeps them (the others wait, then give up with
:class:`~tracemind.errors.LockTimeout`; none of them takes the key over).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import os
from contextlib import contextmanager

from tracemind.backend.file.packs import is_pack, keyed_task_bytes
from tracemind.backend.file.quarantine import quarantine
from tracemind.errors import LockTimeout, QueueError
from tracemind.fsutil import (
    dump_json,
    ensure_dir,
    link_many,
    read_regular,
    scan_entries,
    write_atomic,
    write_many_atomic,
)
from tracemind.values import Value

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from tracemind.fsutil import StrPath

LOCK_TIMEOUT_S = 10.0
LINK_BEHIND_KEYS = 256
"""Batches of at least this many new keys make their key records in a helper thread, right
behind their tasks' names (see :meth:`IdempotencyStore.linking`). Starting and joining a thread
costs ~0.2 ms, 256 key records ~3 ms (~12 µs a link): below this, little to gain."""
LINK_BEHIND_THREAD = "tracemind-key-links"


class KeyRecord(Value):
    """``key`` points at ``task_id``, written at ``created_at``; ``due_ms`` is the task's due
    time as enqueued (None in records of the earliest versions); ``stripe`` is its key's lock
    stripe (None in small records of earlier versions; a task staged by an earlier version was
    staged under it).
    """

    __slots__ = ("created_at", "due_ms", "key", "stripe", "task_id")

    def __init__(
        self,
        key: str,
        task_id: str,
        created_at: float,
        due_ms: int | None,
        stripe: str | None = None,
    ) -> None:
        self.key = key
        self.task_id = task_id
        self.created_at = created_at
        self.due_ms = due_ms
        self.stripe = stripe

    def to_dict(self) -> dict[str, object]:
        return {
            "key": self.key,
            "task_id": self.task_id,
            "created_at": self.created_at,
            "due_ms": self.due_ms,
        }


class Pointer(Value):
    """What a key record says, read without knowing its key (retention): the task, its due time
    as enqueued, when it was written, and its key's lock stripe (None for small records of
    earlier versions)."""

    __slots__ = ("created_at", "due_ms", "stripe", "task_id")

    def __init__(
        self, task_id: str, due_ms: int | None, created_at: float, stripe: str | None
    ) -> None:
        self.task_id = task_id
        self.due_ms = due_ms
        self.created_at = created_at
        self.stripe = stripe


@functools.lru_cache(maxsize=65_536)
def _digest(key: str) -> str:
    import hashlib  # only submissions with a key pay for it (OpenSSL, ~3 ms)

    return hashlib.sha256(key.encode()).hexdigest()[:40]


class IdempotencyStore:
    def __init__(
        self, root: StrPath, *, durable: bool, lock_timeout_s: float = LOCK_TIMEOUT_S
    ) -> None:
        self.root = root
        self.durable = durable
        self.lock_timeout_s = lock_timeout_s
        self._keys = os.path.join(root, "keys")
        self._prefix = os.path.join(self._keys, "")

    @staticmethod
    def stripe(key: str) -> str:
        """The lock stripe of ``key``: two hex digits (256 locks shared by all keys)."""
        return _digest(key)[:2]

    @staticmethod
    def digest(key: str) -> str:
        """The name of ``key``'s record (40 hex digits; its first two are its stripe)."""
        return _digest(key)

    @contextmanager
    def locked(self, key: str, *, timeout_s: float | None = None) -> Iterator[None]:
        """Hold the key's cross-process lock (raises LockTimeout after ``lock_timeout_s``)."""
        with self.locked_many([key], timeout_s=timeout_s):
            yield

    @contextmanager
    def locked_many(self, keys: Iterable[str], *, timeout_s: float | None = None) -> Iterator[None]:
        """Hold the locks of every key in ``keys`` (their stripes, taken in one global order so
        two batches never deadlock); raises LockTimeout when one is not acquired in time."""
        with self.locked_stripes({self.stripe(key) for key in keys}, timeout_s=timeout_s):
            yield

    @contextmanager
    def locked_stripes(
        self, stripes: Iterable[str], *, timeout_s: float | None = None
    ) -> Iterator[None]:
        """Hold the locks of ``stripes`` (see :meth:`stripe`), in one global order."""
        numbers = [int(stripe, 16) for stripe in set(stripes)]
        if not numbers:
            yield
            return
        from tracemind.backend.file import stripes as striped

        wait_s = self.lock_timeout_s if timeout_s is None else timeout_s
        with striped.held(os.path.join(self.root, "locks"), numbers, wait_s):
            yield

    def _path(self, key: str) -> str:
        return self._prefix + _digest(key) + ".json"

    def get(self, key: str) -> KeyRecord | None:
        """The record for ``key``; None when absent or damaged (a damaged record blocks nothing:
        a file whose first line is not a task record or a record of an earlier version, or any
        entry that is not a regular file, which is never opened).

        A record this process may not read is no damage and is not taken as absent either (that
        would give the key a second task): :class:`QueueError` naming the fix."""
        return self.lookup(key)[0]

    def lookup(self, key: str) -> tuple[KeyRecord | None, bool]:
        """(the record for ``key``, as :meth:`get` gives it; whether ``keys/`` has an entry
        for it at all — one that is no record is damage, see :meth:`quarantine_damaged`)."""
        try:
            pointer = self._read_pointer(self._path(key))
        except FileNotFoundError:
            return None, False
        if pointer is None:
            return None, True
        record = KeyRecord(key, pointer.task_id, pointer.created_at, pointer.due_ms, pointer.stripe)
        return record, True

    def names(self, key: str, task_id: str, task_file: os.stat_result) -> bool | None:
        """Whether ``key``'s record names the task ``task_id`` (whose file ``task_file``
        describes), for a consumer about to run a new keyed task: it runs only a task its key
        names (see :mod:`tracemind.submit`). True when the record names it (or this process
        may not read the record: the task then runs rather than waits for ever, as a replay
        gives such a task back); False when it names another task or none and no submitter
        holds the key's lock (the task's submission never finished: its submitter died, or
        rolled it back, before writing the key); None while a submitter holds the lock, or
        the lock cannot be taken here (ask again later: no clock decides that it is dead).

        The usual answer costs one ``stat``: the record is a second name of the task's file."""
        with contextlib.suppress(OSError):
            if os.path.samestat(os.stat(self._path(key)), task_file):
                return True
        try:
            if self.owner(key) == task_id:  # a copy (another file system), or an old record
                return True
        except QueueError:
            return True
        try:
            with self.locked(key, timeout_s=0):
                return self.owner(key) == task_id
        except (LockTimeout, QueueError):
            return None

    def owner(self, key: str) -> str | None:
        """The id of the task ``key`` points at; None when it points at none (see :meth:`get`,
        whose errors it raises)."""
        record = self.get(key)
        return None if record is None else record.task_id

    def pointer_at(self, path: str) -> Pointer | None:
        """What the key record at ``path`` points at; None when absent or damaged, and
        :class:`QueueError` when this process may not read it (see :meth:`get`)."""
        try:
            return self._read_pointer(path)
        except FileNotFoundError:
            return None

    def _read_pointer(self, path: str) -> Pointer | None:
        """:meth:`pointer_at`, but raising ``FileNotFoundError`` when there is no entry."""
        try:
            data = read_regular(path)
            if is_pack(data):  # a link to the pack holding the key's task
                data = keyed_task_bytes(data, os.path.basename(path)[:40])
            first_line = data.partition(b"\n")[0]
            data = json.loads(first_line)
        except FileNotFoundError:
            raise
        except ValueError:  # torn, not JSON, or not a regular file (DamagedEntry)
            return None
        except OSError as exc:
            from tracemind.backend.file.problems import unreadable_error

            raise unreadable_error(path, exc) from exc
        try:
            if "v" in data:  # the task's own record: the key's task file, linked
                return Pointer(
                    _task_id(data["task_id"]),
                    int(float(data["due_at"]) * 1000),
                    float(data["enqueued_at"]),
                    os.path.basename(path)[:2],
                )
            due_ms = data.get("due_ms")
            return Pointer(
                _task_id(data["task_id"]),
                due_ms if isinstance(due_ms, int) and not isinstance(due_ms, bool) else None,
                float(data["created_at"]),
                None,
            )
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError):
            return None

    def records(self) -> Iterator[str]:
        """The path of every entry of ``keys/`` named like a record (any kind: a reader of one
        tells a record from damage); read-only."""
        for name, _ in scan_entries(self._keys):
            if len(name) == 45 and name.endswith(".json"):
                yield os.path.join(self._keys, name)

    def link_many(self, tasks: Iterable[tuple[str, str]]) -> None:
        """Point each key at its task, given as ``(key, path of the task's file)``, by a hard
        link named for the key, durably when the store is (call while holding
        :meth:`locked_many` for those keys, once the task files are whole, and durable with a
        durable store). A key that already has a record (of a task that no longer blocks it)
        gets the new one by a rename over it."""
        items = ((task_file, self._path(key)) for key, task_file in tasks)  # (as they come)
        first = next(items, None)
        if first is None:
            return
        ensure_dir(self._keys)
        tmp_dir = ensure_dir(os.path.join(self.root, "tmp"))
        link_many(itertools.chain([first], items), tmp_dir=tmp_dir, durable=self.durable)

    @contextmanager
    def linking(self, count: int) -> Iterator[Callable[[str, str], None]]:
        """Point keys at their tasks while the tasks are being written: yields ``link(key,
        task_file)``, to call once that task's file is whole, durable and named (in the order
        the tasks are named); when the block ends, every key so given is linked as by
        :meth:`link_many` (durably with a durable store), or the error that stopped it is
        raised there. Call holding the keys' locks.

        A batch of :data:`LINK_BEHIND_KEYS` keys or more (``count``) has its key records made
        by a helper thread, each right behind its task's name: the two kinds of links run side
        by side instead of one after the other. Each key record still follows its task's name,
        so a process killed at any instant leaves no key naming a task that is not there.
        Smaller batches link their keys as the block ends, and so does a big one where no
        thread may start (``RLIMIT_NPROC``). A block that raises links no more keys than it
        gave before raising (the helper finishes those first, so the caller can then withdraw
        the tasks no key names)."""
        links = _LinksBehind.start(self) if count >= LINK_BEHIND_KEYS else None
        if links is None:
            given: list[tuple[str, str]] = []
            yield lambda key, task_file: given.append((key, task_file))
            self.link_many(given)
            return
        try:
            yield links.give
        finally:
            links.finish()
        if links.failed is not None:
            raise links.failed

    def put_many(self, records: Iterable[KeyRecord]) -> None:
        """Point each record's key at its task with a small record of its own (the form of
        earlier versions, which :meth:`link_many` replaced; kept for tools and tests), durably
        when the store is (call while holding :meth:`locked_many` for those keys)."""
        items = [(self._path(r.key), dump_json(r.to_dict())) for r in records]
        if not items:
            return
        ensure_dir(self._keys)
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


class _LinksBehind:
    """The helper thread of :meth:`IdempotencyStore.linking`: links each key given to it, in
    order, as :meth:`IdempotencyStore.link_many` does for a list. Starting one raises
    ``RuntimeError`` where no thread may start (``RLIMIT_NPROC``)."""

    def __init__(self, store: IdempotencyStore) -> None:
        import queue

        from tracemind.threads import start_helper_thread

        self.store = store
        self.feed: queue.SimpleQueue[tuple[str, str] | None] = queue.SimpleQueue()
        self.failed: BaseException | None = None
        self.thread = start_helper_thread(self._run, LINK_BEHIND_THREAD)

    @classmethod
    def start(cls, store: IdempotencyStore) -> _LinksBehind | None:
        """A running helper; None where no thread may start."""
        try:
            return cls(store)
        except RuntimeError:
            return None

    def give(self, key: str, task_file: str) -> None:
        self.feed.put((key, task_file))

    def _run(self) -> None:
        try:
            self.store.link_many(iter(self.feed.get, None))
        except BaseException as exc:  # (raised in the caller's thread: see linking)
            self.failed = exc

    def finish(self) -> None:
        """No more keys: wait, even through a Ctrl-C, until those given are linked (or their
        linking failed)."""
        from tracemind.threads import join_uninterrupted

        self.feed.put(None)
        join_uninterrupted(self.thread)


def _task_id(value: object) -> str:
    from tracemind.queue.names import is_task_id

    if not isinstance(value, str) or not is_task_id(value):
        raise ValueError("not a task id")
    return value
