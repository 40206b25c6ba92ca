"""The dead letters, the registry and the submitter of a Redis location (guarantees 8, 9, 11)."""

from __future__ import annotations

import json

from tracemind.backend.redis.connection import Keys, dumps
from tracemind.backend.redis.records import ms, requeued_record
from tracemind.queue.names import new_task_id
from tracemind.queue.protocol import NewTask
from tracemind.queue.records import FlowParts, TaskMaker
from tracemind.submission import SubmitResult, SubmitsOne

TYPE_CHECKING = False  # (on `tm enqueue`'s path: no `typing` at run time)
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

    from tracemind.backend.redis.connection import Connection
    from tracemind.backend.redis.queue import RedisQueue
    from tracemind.clock import Clock
    from tracemind.flows import FlowSnapshot
    from tracemind.submission import Submission

STALE_S = 10.0
"""A heartbeat older than this is not live (as in :mod:`tracemind.backend.file.registry`)."""
FORGET_S = 86_400.0
"""A registration whose heartbeat is older than this is removed by the next registration."""
BATCH_TICK_TASKS = 1000
"""A big batch's ids advance a millisecond every this many tasks (they stay time-sortable)."""


class RedisDeadLetters:
    """:class:`~tracemind.backend.protocol.DeadLetters` of a Redis location: a sorted set of
    dead task ids by death time; each entry is the ``done`` field of the task's hash."""

    def __init__(self, connection: Connection, clock: Clock) -> None:
        self.connection = connection
        self.keys = connection.keys
        self.clock = clock

    def newest_first(self, limit: int | None = None) -> list[dict[str, Any]]:
        client = self.connection.client
        with self.connection.errors():
            ids = client.zrevrange(self.keys.dead, 0, -1 if limit is None else limit - 1)
            pipe = client.pipeline(transaction=False)
            for task_id in ids:
                pipe.hmget(self.keys.task(task_id), ["state", "done"])
            replies = pipe.execute() if ids else []
        return [e for e in (_entry(state, done) for state, done in replies) if e is not None]

    def get(self, task_id: str) -> dict[str, Any] | None:
        with self.connection.errors():
            state, done = self.connection.client.hmget(self.keys.task(task_id), ["state", "done"])
        return _entry(state, done)

    def count(self) -> int:
        with self.connection.errors():
            return int(self.connection.client.zcard(self.keys.dead))

    def requeue(self, task_id: str) -> bool:
        found = self._dead(task_id)
        if found is None:
            return False
        entry, finished_ms = found
        now_s = self.clock()
        audit = dumps({**entry, "requeued_at": now_s})
        record = dumps(requeued_record(entry))
        args = (task_id, finished_ms, record, ms(now_s))
        key = self.keys.audit_copy(task_id, "requeued", ms(now_s))
        return bool(self.connection.run("requeue", *args, key, audit))

    def purge(self, task_id: str) -> bool:
        found = self._dead(task_id)
        if found is None:
            return False
        entry, finished_ms = found
        now_s = self.clock()
        audit = dumps({**entry, "purged_at": now_s})
        key = self.keys.audit_copy(task_id, "purged", ms(now_s))
        return bool(self.connection.run("purge", task_id, finished_ms, ms(now_s), key, audit))

    def quarantine_damaged(self) -> int:
        """Nothing to move: an entry is written whole by one script, never torn."""
        return 0

    def _dead(self, task_id: str) -> tuple[dict[str, Any], str] | None:
        with self.connection.errors():
            state, done, finished_ms = self.connection.client.hmget(
                self.keys.task(task_id), ["state", "done", "finished_ms"]
            )
        entry = _entry(state, done)
        return None if entry is None or finished_ms is None else (entry, finished_ms)


def _entry(state: str | None, done: str | None) -> dict[str, Any] | None:
    if state != "dead" or not done:
        return None
    try:
        entry = json.loads(done)
    except ValueError:
        return None
    return entry if isinstance(entry, dict) else None


class RedisRegistry:
    """:class:`~tracemind.backend.protocol.Registry` of a Redis location: one hash, instance id
    → registration (JSON, with ``heartbeat_at`` from the backend's clock)."""

    def __init__(self, connection: Connection, clock: Clock) -> None:
        self.connection = connection
        self.key = connection.keys.registry
        self.clock = clock

    def register(self, entry: dict[str, Any]) -> None:
        now_s = self.clock()
        stamped = {**entry, "heartbeat_at": now_s}
        with self.connection.errors():
            self.connection.client.hset(self.key, str(entry["instance_id"]), dumps(stamped))
            old = [
                e["instance_id"] for e in self._entries() if now_s - e["heartbeat_at"] > FORGET_S
            ]
            if old:
                self.connection.client.hdel(self.key, *old)

    def deregister(self, instance_id: str) -> None:
        with self.connection.errors():
            self.connection.client.hdel(self.key, instance_id)

    def live(self, now_s: float | None = None) -> list[dict[str, Any]]:
        now_s = self.clock() if now_s is None else now_s
        found = []
        for entry in self._entries():
            age_s = now_s - entry["heartbeat_at"]
            if age_s <= STALE_S:
                found.append({**entry, "heartbeat_age_s": round(max(age_s, 0.0), 3)})
        return sorted(found, key=lambda e: str(e["instance_id"]))

    def _entries(self) -> list[dict[str, Any]]:
        # Through the wire, not redis-py: `tm enqueue` reads the registry for its notice.
        flat = self.connection.on_wire("HGETALL", self.key)
        entries = []
        for text in flat[1::2]:
            try:
                entry = json.loads(text)
            except ValueError:
                continue
            beat = entry.get("heartbeat_at") if isinstance(entry, dict) else None
            if isinstance(beat, int | float) and isinstance(entry.get("instance_id"), str):
                entries.append(entry)
        return entries


class RedisSubmitter(SubmitsOne):
    """:class:`~tracemind.backend.protocol.Submitter` of a Redis location (guarantee 8).

    Each chunk of a batch is one script that decides every key (a key blocks while its task
    waits or runs, or succeeded less than ``ttl_s`` ago), claims the free ones and stores their
    tasks together: a submitter killed at any instant leaves a key with its task, or neither.
    """

    def __init__(self, queue: RedisQueue, *, ttl_s: float, clock: Clock) -> None:
        self.queue = queue
        self.ttl_s = ttl_s
        self.clock = clock
        self._flow_parts = FlowParts()

    def submit_many(
        self, flow: FlowSnapshot, submissions: Sequence[Submission]
    ) -> list[SubmitResult]:
        now_s = self.clock()
        maker = TaskMaker(flow, now_s, self._flow_parts)
        items: list[tuple[NewTask, str]] = []
        for index, item in enumerate(submissions):
            task_id = new_task_id(at_ms=ms(now_s) + index // BATCH_TICK_TASKS)
            key = item.idempotency_key
            items.append((maker.task(task_id, item), "" if key is None else Keys.digest(key)))
        resolved = self.queue.submit(items, key_ttl_s=self.ttl_s)
        return [SubmitResult(r.removeprefix("dup:"), r.startswith("dup:")) for r in resolved]
