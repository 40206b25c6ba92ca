"""The Redis backend: one ``redis://`` or ``rediss://`` location behind the
:class:`~tracemind.backend.protocol.Backend` contract (docs/queue-format.md, "Redis backend")."""

from __future__ import annotations

import os
import time
from collections import Counter

from tracemind.backend.redis.connection import Connection
from tracemind.backend.redis.queue import RedisQueue
from tracemind.backend.redis.records import ms
from tracemind.backend.redis.stores import RedisDeadLetters, RedisRegistry, RedisSubmitter
from tracemind.clock import system_clock
from tracemind.errors import NotFound, QueueError

TYPE_CHECKING = False  # (on `tm enqueue`'s path: no `typing` at run time)
if TYPE_CHECKING:
    from collections.abc import Collection, Mapping
    from typing import Any

    from tracemind.backend.location import Location
    from tracemind.backend.retention import RetentionPolicy
    from tracemind.clock import Clock
    from tracemind.queue.protocol import QueueStats, TaskInfo, TaskStatus

PRUNE_EVERY_S = 60.0
PRUNE_BUDGET = 5_000
PRUNE_CHUNK = 500
"""Records one prune script removes at most (bounds how long it holds the server)."""
PRUNED_KINDS = ("keys", "results", "dlq_audit")
"""What retention removes on Redis, keys first (a key must not outlive its result)."""


class RedisBackend:
    """The :class:`~tracemind.backend.protocol.Backend` of a Redis location. Opening connects
    nothing; the first command does, and a server that cannot be used raises
    :class:`~tracemind.errors.QueueError` with one line naming ``host:port``.

    ``durable`` is the server's to keep: an enqueue or ack survives what the server's
    persistence setting (``appendfsync``) makes it survive once its script returned.
    """

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
        self.durable = durable
        self.clock = clock or system_clock
        self.connection = Connection(location, env)
        self.queue = RedisQueue(self.connection, self.clock)
        self.dead_letters = RedisDeadLetters(self.connection, self.clock)
        self.registry = RedisRegistry(self.connection, self.clock)
        self._policy: RetentionPolicy | None = None
        self._next_prune_s = time.monotonic() + PRUNE_EVERY_S
        self._pruned: Counter[str] = Counter()

    def submitter(self, ttl_s: float) -> RedisSubmitter:
        return RedisSubmitter(self.queue, ttl_s=ttl_s, clock=self.clock)

    def counts(self) -> tuple[QueueStats, int, int]:
        return self.queue.counts()

    def cancel(self, task_id: str) -> str:
        outcome = str(self.connection.run("cancel", task_id, ms(self.clock())))
        if outcome == "unknown":
            raise NotFound(f"task {task_id} not found")
        return outcome

    def prepare(self) -> int:
        """Check the retention settings, and that the server answers and is Redis 7.0 or later
        (nothing to create: the first writer makes its keys; nothing to migrate: 0)."""
        _ = self.policy
        self._check_server()
        return 0

    def _check_server(self) -> None:
        self.connection.check_version()
        with self.connection.errors():
            self.connection.client.ping()

    @property
    def policy(self) -> RetentionPolicy:
        if self._policy is None:
            from tracemind.backend.retention import RetentionPolicy

            self._policy = RetentionPolicy.from_env(self.env)
        return self._policy

    def maintain(self) -> None:
        self.queue.maintain()
        now_s = time.monotonic()
        if now_s >= self._next_prune_s:
            self._next_prune_s = now_s + PRUNE_EVERY_S
            self._pruned.update(self.prune(budget=PRUNE_BUDGET))

    def pruned(self) -> Counter[str]:
        return Counter(self._pruned)

    def prune(
        self, *, now_s: float | None = None, dry_run: bool = False, budget: int = 10_000
    ) -> Counter[str]:
        """Remove idempotency keys whose task succeeded ``TM_IDEMPOTENCY_TTL_S`` ago, succeeded
        (and cancelled) tasks ``TM_RESULT_TTL_S`` after they finished, and the audit copies of
        purged or requeued dead letters after ``TM_DLQ_AUDIT_TTL_S``; never a task that can
        still run, never a dead letter. Each script is atomic, so an interrupted prune leaves
        every record whole."""
        from tracemind.backend.retention import KINDS

        now_s = self.clock() if now_s is None else now_s
        policy = self.policy
        ttl_s = {
            "keys": policy.key_ttl_s,
            "results": policy.result_ttl_s,
            "dlq_audit": policy.dlq_audit_ttl_s,
        }
        sets = {"keys": self.connection.keys.keyed, "results": self.connection.keys.done}
        sets["dlq_audit"] = self.connection.keys.audit
        removed: Counter[str] = Counter({kind: 0 for kind in KINDS})
        for kind in PRUNED_KINDS:
            cutoff_ms = ms(now_s - ttl_s[kind])
            while (left := budget - sum(removed.values())) > 0:
                if dry_run:
                    with self.connection.errors():
                        found = self.connection.client.zcount(sets[kind], "-inf", f"({cutoff_ms}")
                    removed[kind] += min(int(found), left)
                    break
                limit = min(left, PRUNE_CHUNK)
                before = self._zcard(sets[kind])
                removed[kind] += int(self.connection.run("prune", kind, cutoff_ms, limit))
                if before - self._zcard(sets[kind]) < limit:
                    break  # nothing older is left
        if not dry_run and any(removed.values()):
            from tracemind.log import get_logger

            get_logger("tracemind.retention").info("expired records removed", **dict(removed))
        return removed

    def _zcard(self, key: str) -> int:
        with self.connection.errors():
            return int(self.connection.client.zcard(key))

    def problems(self) -> list[str]:
        try:
            self._check_server()
        except QueueError as exc:
            return [str(exc)]
        return []

    def unreadable_records(self) -> tuple[int, list[dict[str, Any]]]:
        """Always none: every process reads the same server with the same rights."""
        return 0, []

    def finished(self, task_id: str) -> TaskInfo | None:
        return self.queue.finished(task_id)

    def watch_finished(self, task_ids: Collection[str]) -> PollingWatch:
        return PollingWatch()

    def newest(
        self, statuses: Collection[TaskStatus], limit: int, *, flow_id: str | None = None
    ) -> list[TaskInfo]:
        return self.queue.newest(statuses, limit, flow_id=flow_id)

    def waiting_since(self, epoch_s: float) -> int:
        return self.queue.waiting_since(epoch_s)

    def close(self) -> None:
        self.connection.close()


class PollingWatch:
    """A :class:`~tracemind.backend.protocol.FinishWatch` that sleeps at most
    :data:`~tracemind.backend.protocol.FINISH_RECHECK_S` per wait: the waiter looks again
    after each one (a finish is a Redis write no client is told of)."""

    def wait(self, timeout_s: float) -> None:
        from tracemind.backend.protocol import FINISH_RECHECK_S

        time.sleep(max(0.0, min(timeout_s, FINISH_RECHECK_S)))

    def close(self) -> None:
        pass

    def __enter__(self) -> PollingWatch:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
