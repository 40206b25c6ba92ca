"""The file backend: a data root on a local file system (docs/queue-format.md).

An adapter from the :class:`~tracemind.backend.protocol.Backend` contract onto the file stores
(:class:`~tracemind.queue.file_backend.FileQueue`, :class:`~tracemind.dlq.DeadLetterStore`,
:class:`~tracemind.idempotency.IdempotencyStore`, :mod:`tracemind.retention`).
"""

from __future__ import annotations

import os

from tracemind.clock import system_clock
from tracemind.stores import Stores, open_stores_at

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections import Counter
    from collections.abc import Mapping
    from typing import Any

    from tracemind.backend.location import Location
    from tracemind.clock import Clock
    from tracemind.queue.protocol import QueueStats
    from tracemind.queue.registry import Registry
    from tracemind.retention import Pruner
    from tracemind.submit import QueueSubmitter


class FileDeadLetters:
    """:class:`~tracemind.backend.protocol.DeadLetters` over a data root's ``dlq/``."""

    def __init__(self, stores: Stores) -> None:
        self._stores = stores

    def newest_first(self, limit: int | None = None) -> list[dict[str, Any]]:
        entries = self._stores.dlq.newest_first()
        return entries if limit is None else entries[:limit]

    def get(self, task_id: str) -> dict[str, Any] | None:
        return self._stores.dlq.get(task_id)

    def count(self) -> int:
        return self._stores.dlq.count()

    def requeue(self, task_id: str) -> bool:
        return self._stores.requeue_dead(task_id)

    def purge(self, task_id: str) -> bool:
        return self._stores.purge_dead(task_id)

    def quarantine_damaged(self) -> int:
        return self._stores.dlq.quarantine_damaged()


class FileBackend:
    """The :class:`~tracemind.backend.protocol.Backend` of a ``file://`` location."""

    def __init__(
        self,
        location: Location,
        *,
        durable: bool,
        env: Mapping[str, str] = os.environ,
        clock: Clock | None = None,
    ) -> None:
        self.location = location
        self.env = env
        self.stores = open_stores_at(
            *location.file_dirs(), durable=durable, clock=clock or system_clock
        )
        self.queue = self.stores.queue
        self.dead_letters = FileDeadLetters(self.stores)
        self._pruner: Pruner | None = None

    @property
    def registry(self) -> Registry:
        return self.stores.queue.registry

    def submitter(self, ttl_s: float) -> QueueSubmitter:
        return self.stores.submitter(ttl_s)

    def counts(self) -> tuple[QueueStats, int, int]:
        return self.stores.queue.counts()

    def cancel(self, task_id: str) -> str:
        return self.stores.queue.cancel(task_id)

    def prepare(self) -> None:
        self.stores.queue.migrate()  # (prepares it too)

    @property
    def pruner(self) -> Pruner:
        if self._pruner is None:
            from tracemind.retention import Pruner, RetentionPolicy

            self._pruner = Pruner(self.stores, RetentionPolicy.from_env(self.env))
        return self._pruner

    def maintain(self) -> None:
        from tracemind.retention import upkeep

        self.stores.queue.maintain()
        upkeep(self.stores, self.pruner)

    def prune(
        self, *, now_s: float | None = None, dry_run: bool = False, budget: int = 10_000
    ) -> Counter[str]:
        now_s = self.stores.clock() if now_s is None else now_s
        return self.pruner.prune(now_s=now_s, dry_run=dry_run, budget=budget)

    def problems(self) -> list[str]:
        import errno

        lines = []
        for directory in self.location.file_dirs():
            while not os.path.lexists(directory) and directory != "/":
                directory = os.path.dirname(directory)  # (the writer creates what is missing)
            if not os.access(directory, os.W_OK | os.X_OK):
                code = errno.EROFS if os.access(directory, os.R_OK) else errno.EACCES
                lines.append(f"cannot write {directory}: {os.strerror(code)}")
        return lines

    def close(self) -> None:
        self.stores.queue.flush()
