"""Opening the three stores of one data root together, and the operations that span them."""

from __future__ import annotations

import os

from tracemind.backend.file.dlq import DeadLetterStore
from tracemind.backend.file.keys import IdempotencyStore
from tracemind.backend.file.queue import FileQueue
from tracemind.clock import Clock, system_clock
from tracemind.submit import QueueSubmitter

TYPE_CHECKING = False
if TYPE_CHECKING:
    from tracemind.config import DataDirs
    from tracemind.fsutil import StrPath


class Stores:
    def __init__(
        self, queue: FileQueue, dlq: DeadLetterStore, keys: IdempotencyStore, clock: Clock
    ) -> None:
        self.queue = queue
        self.dlq = dlq
        self.keys = keys
        self.clock = clock

    @property
    def dirs(self) -> DataDirs:
        """The three directories (made when asked: no pathlib on ``tm enqueue``'s path)."""
        from tracemind.config import DataDirs

        return DataDirs.of(
            os.fspath(self.queue.root), os.fspath(self.keys.root), os.fspath(self.dlq.root)
        )

    def submitter(self, ttl_s: float) -> QueueSubmitter:
        return QueueSubmitter(self.queue, self.keys, ttl_s=ttl_s, clock=self.clock)

    def settle_staged(self) -> int:
        """Publish or remove what dead submitters left staged (see :mod:`tracemind.submit`)."""
        return self.submitter(ttl_s=0.0).settle_staged()

    def purge_dead(self, task_id: str) -> bool:
        """Remove a dead task for good (an audit copy stays in ``purged/``), and its idempotency
        key with it: a key must never point at a task that no longer exists, or it would block
        its key forever (a key whose task is in no terminal state counts as live). The key goes
        first, under its lock, so a crash in between leaves a dead task without its key (which a
        dead task's key never blocks anyway). False when the DLQ has no such entry."""
        entry = self.dlq.get(task_id)
        if entry is None:
            return False
        key = entry.get("idempotency_key")
        if not isinstance(key, str):
            return self.dlq.purge(task_id)
        with self.keys.locked(key):
            self.keys.forget(key, task_id)
            return self.dlq.purge(task_id)

    def requeue_dead(self, task_id: str) -> bool:
        """Put a dead task back in the queue (see :meth:`FileQueue.requeue`)."""
        return self.queue.requeue(task_id)


def open_stores(dirs: DataDirs, *, durable: bool, clock: Clock = system_clock) -> Stores:
    """The stores of ``dirs``; nothing is created on disk until a writer method needs it."""
    queue, dlq, keys = _open(dirs.queue, dirs.idempotency, dirs.dlq, durable, clock)
    return Stores(queue, dlq, keys, clock)


def open_stores_at(
    queue_dir: str, idempotency_dir: str, dlq_dir: str, *, durable: bool, clock: Clock
) -> Stores:
    """:func:`open_stores` from the three directories as absolute path strings."""
    queue, dlq, keys = _open(queue_dir, idempotency_dir, dlq_dir, durable, clock)
    return Stores(queue, dlq, keys, clock)


def _open(
    queue_dir: StrPath, idempotency_dir: StrPath, dlq_dir: StrPath, durable: bool, clock: Clock
) -> tuple[FileQueue, DeadLetterStore, IdempotencyStore]:
    dlq = DeadLetterStore(dlq_dir, durable=durable, clock=clock)
    keys = IdempotencyStore(idempotency_dir, durable=durable)
    queue = FileQueue(
        queue_dir, dlq, durable=durable, clock=clock, key_owner=keys.owner, key_names=keys.names
    )
    return queue, dlq, keys
