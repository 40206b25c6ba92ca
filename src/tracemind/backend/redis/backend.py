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
    from collections.abc import Mapping

    from tracemind.backend.location import Location
    from tracemind.clock import Clock
    from tracemind.queue.protocol import QueueStats
    from tracemind.retention import RetentionPolicy

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

    def submitter(self, ttl_s: float) -> RedisSubmitter:
        return RedisSubmitter(self.queue, ttl_s=ttl_s, clock=self.clock)

    def counts(self) -> tuple[QueueStats, int, int]:
        return self.queue.counts()

    def cancel(self, task_id: str) -> str:
        outcome = str(self.connection.run("cancel", task_id, ms(self.clock())))
        if outcome == "unknown":
            raise NotFound(f"task {task_id} not found")
        return outcome

    def prepare(self) -> None:
        """Check that the server answers and is Redis 7.0 or later (nothing to create: the first
        writer makes its keys)."""
        self.connection.check_version()
        with self.connection.errors():
            self.connection.client.ping()

    @property
    def policy(self) -> RetentionPolicy:
        if self._policy is None:
            from tracemind.retention import RetentionPolicy

            self._policy = RetentionPolicy.from_env(self.env)
        return self._policy

    def maintain(self) -> None:
        self.queue.maintain()
        now_s = time.monotonic()
        if now_s >= self._next_prune_s:
            self._next_prune_s = now_s + PRUNE_EVERY_S
            self.prune(budget=PRUNE_BUDGET)

    def prune(
        self, *, now_s: float | None = None, dry_run: bool = False, budget: int = 10_000
    ) -> Counter[str]:
        """Remove idempotency keys whose task succeeded ``TM_IDEMPOTENCY_TTL_S`` ago, succeeded
        (and cancelled) tasks ``TM_RESULT_TTL_S`` after they finished, and the audit copies of
        purged or requeued dead letters after ``TM_DLQ_AUDIT_TTL_S``; never a task that can
        still run, never a dead letter. Each script is atomic, so an interrupted prune leaves
        every record whole."""
        from tracemind.retention import KINDS

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
            self.prepare()
        except QueueError as exc:
            return [str(exc)]
        return []

    def close(self) -> None:
        self.connection.close()
