"""The file backend: a data root on a local file system (docs/queue-format.md).

An adapter from the :class:`~tracemind.backend.protocol.Backend` contract onto the file stores
(:class:`~tracemind.backend.file.queue.FileQueue`, :class:`~tracemind.backend.file.dlq.DeadLetterStore`,
:class:`~tracemind.backend.file.keys.IdempotencyStore`, :mod:`tracemind.backend.file.retention`).
"""

from __future__ import annotations

import os

from tracemind.backend.file.stores import Stores, open_stores_at
from tracemind.clock import system_clock

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections import Counter
    from collections.abc import Collection, Mapping
    from typing import Any

    from tracemind.backend.file.registry import Registry
    from tracemind.backend.file.retention import Pruner
    from tracemind.backend.file.terminal_watch import TerminalWatch
    from tracemind.backend.location import Location
    from tracemind.clock import Clock
    from tracemind.queue.protocol import QueueStats, TaskInfo, TaskStatus
    from tracemind.submit import QueueSubmitter


class FileDeadLetters:
    """:class:`~tracemind.backend.protocol.DeadLetters` over a data root's ``dlq/``."""

    def __init__(self, stores: Stores) -> None:
        self._stores = stores

    def newest_first(self, limit: int | None = None) -> list[dict[str, Any]]:
        return self._stores.dlq.newest_first(limit)

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

    def prepare(self) -> int:
        from tracemind.fsutil import check_dirs_writable

        self.pruner  # noqa: B018 (reads the retention settings: a bad one fails here)
        check_dirs_writable(*self.location.file_dirs())  # (one line naming the directory)
        return self.stores.queue.migrate()  # (prepares it too)

    @property
    def pruner(self) -> Pruner:
        if self._pruner is None:
            from tracemind.backend.file.retention import Pruner
            from tracemind.backend.retention import RetentionPolicy

            self._pruner = Pruner(self.stores, RetentionPolicy.from_env(self.env))
        return self._pruner

    def maintain(self) -> None:
        from tracemind.backend.file.retention import upkeep

        self.stores.queue.maintain()
        upkeep(self.stores, self.pruner)

    def prune(
        self, *, now_s: float | None = None, dry_run: bool = False, budget: int = 10_000
    ) -> Counter[str]:
        now_s = self.stores.clock() if now_s is None else now_s
        return self.pruner.prune(now_s=now_s, dry_run=dry_run, budget=budget)

    def pruned(self) -> Counter[str]:
        return self.pruner.totals

    def problems(self) -> list[str]:
        from tracemind.fsutil import first_unwritable

        unwritable = first_unwritable(self.location.file_dirs())
        return [] if unwritable is None else [str(unwritable)]

    def unreadable_records(self) -> tuple[int, list[dict[str, Any]]]:
        from tracemind.backend.file.problems import unreadable_records

        return unreadable_records(self.stores.queue.root)

    def finished(self, task_id: str) -> TaskInfo | None:
        return self.stores.queue.finished(task_id)

    def watch_finished(self, task_ids: Collection[str]) -> TerminalWatch:
        from tracemind.backend.file.terminal_watch import TerminalWatch

        # Where each task's terminal record lands: its done and cancelled hour buckets, or
        # the DLQ (a wake-up means one of them may have finished).
        queue = self.stores.queue
        folders = {os.path.dirname(queue.done_path(t)) for t in task_ids}
        folders |= {os.path.dirname(queue.cancelled_path(t)) for t in task_ids}
        return TerminalWatch([*sorted(folders), self.stores.dlq.root])

    def newest(
        self, statuses: Collection[TaskStatus], limit: int, *, flow_id: str | None = None
    ) -> list[TaskInfo]:
        from tracemind.backend.file.listing import newest_tasks

        return newest_tasks(self.stores.queue, statuses, limit, flow_id=flow_id)

    def waiting_since(self, epoch_s: float) -> int:
        return self.stores.queue.waiting_since(epoch_s)

    def close(self) -> None:
        """Commit the acks in flight, and let this process's pack go (removing the next one,
        if it was made ahead)."""
        self.stores.queue.flush()
        self.stores.queue.packs.close()
