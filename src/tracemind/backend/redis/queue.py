"""The task queue on Redis: a :class:`~tracemind.queue.protocol.TaskQueue` (guarantees 1-7).

Due tasks are entries of a stream read through one consumer group (``XREADGROUP``: each entry
goes to exactly one consumer and stays in that consumer's pending entries list until the task
leaves flight); delayed tasks and retry backoff wait in a sorted set by due time and move into
the stream when due, inside the script that leases (or :meth:`RedisQueue.maintain`). Lease
deadlines are a sorted set of their own, written from this process's clock, so expiry follows
the clock the backend was given, never the server's. Each verb is one Lua script (see
:mod:`.scripts`): atomic whatever happens to the client.
"""

from __future__ import annotations

import json
import time

from tracemind.backend.redis.connection import MAX_BLOCK_S, dumps
from tracemind.backend.redis.records import encode_record, ms, task_info
from tracemind.backend.redis.scripts import GROUP
from tracemind.queue.names import new_token
from tracemind.queue.protocol import (
    Failure,
    Lease,
    LeaseLost,
    NewTask,
    QueueStats,
    TaskInfo,
    TaskStatus,
)
from tracemind.queue.records import (
    count_of,
    dead_entry,
    max_attempts_of,
    with_failure,
)

TYPE_CHECKING = False  # (on `tm enqueue`'s path: no `typing` at run time)
if TYPE_CHECKING:
    from collections.abc import Collection, Iterable, Sequence
    from typing import Any

    from tracemind.backend.redis.connection import Connection
    from tracemind.clock import Clock

PROMOTE_LIMIT = 100
"""The stream is topped up to this many undelivered tasks (bounds a script's run time, and how
many tasks one that falls due can wait behind)."""
RECOVER_LIMIT = 1000
"""At most this many expired leases are looked at per :meth:`RedisQueue.recover`."""
ENQUEUE_CHUNK = 1000
"""Tasks per enqueue script: each chunk is atomic; a bigger batch is several scripts."""
CONSUMER_IDLE_S = 600.0
"""A consumer name that held nothing for this long is forgotten by :meth:`RedisQueue.maintain`."""
LIST_CAP = 10_000
"""At most this many tasks are looked at by one :meth:`RedisQueue.newest` listing."""
LIST_CHUNK = 200
_WAITING = ("waiting", "ready")
LOST_ERROR = "the worker died or its lease expired during this attempt"


class RedisQueue:
    """A :class:`~tracemind.queue.protocol.TaskQueue` on one Redis server and key prefix.

    Safe for many processes and for threads (the client is a connection pool): ``renew`` may
    run beside the other verbs.
    """

    def __init__(self, connection: Connection, clock: Clock) -> None:
        self.connection = connection
        self.keys = connection.keys
        self.clock = clock
        self._last_event: str | None = None
        self._next_forget_s = time.monotonic() + CONSUMER_IDLE_S

    @property
    def _log(self) -> Any:
        from tracemind.log import get_logger

        return get_logger("tracemind.queue")

    # -- writers -------------------------------------------------------------------------------

    def enqueue(self, tasks: Sequence[NewTask]) -> None:
        self.submit([(t, "") for t in tasks], key_ttl_s=0.0)

    def submit(self, tasks: Sequence[tuple[NewTask, str]], key_ttl_s: float) -> list[str]:
        """Enqueue ``(task, idempotency key digest or "")`` pairs; returns, per pair, the id the
        task resolves to, prefixed ``"dup:"`` when it is a duplicate (see ``ENQUEUE``)."""
        resolved: list[str] = []
        flows: dict[int, str] = {}
        for start in range(0, len(tasks), ENQUEUE_CHUNK):
            args: list[str | int] = [ms(self.clock()), ms(key_ttl_s)]
            for task, digest in tasks[start : start + ENQUEUE_CHUNK]:
                args += [task.task_id, digest, ms(task.due_s), encode_record(task.record, flows)]
            reply = self.connection.run("enqueue", *args)
            resolved += [
                ("dup:" if int(dup) else "") + task_id
                for task_id, dup in zip(reply[::2], reply[1::2], strict=True)
            ]
        return resolved

    def lease(self, consumer: str, lease_s: float) -> Lease | None:
        while True:
            now_s = self.clock()
            deadline_ms = ms(now_s + lease_s)
            token = new_token()
            got = self.connection.run(
                "lease", ms(now_s), deadline_ms, consumer, token, PROMOTE_LIMIT
            )
            if not got:
                return None
            task_id, attempt, text = got
            try:
                record = json.loads(text)
                if not isinstance(record, dict):
                    raise ValueError("not a JSON object")
            except ValueError as exc:
                self.connection.run("damaged_lease", task_id, token)
                self._log.error(
                    "task set aside: unreadable record", task_id=task_id, error=str(exc)
                )
                continue
            return Lease(
                task_id=task_id,
                attempt=int(attempt),
                consumer=consumer,
                token=token,
                deadline_s=deadline_ms / 1000,
                record=record,
            )

    def take_share(self, index: int, count: int) -> None:
        """Nothing to do: a consumer group delivers each stream entry to one consumer."""

    def wait_for_work(self, timeout_s: float) -> None:
        """Block on the queue's event stream (every enqueue, retry, recovery and requeue adds
        an event) up to ``timeout_s``, or until the next delayed task falls due."""
        client = self.connection.client
        with self.connection.errors():
            if self._last_event is None:
                last = client.xrevrange(self.keys.events, count=1)
                self._last_event = last[0][0] if last else "0-0"
                return  # look once more: something may have arrived before this
            head = client.zrange(self.keys.due, 0, 0, withscores=True)
            if head:
                timeout_s = min(timeout_s, float(head[0][1]) / 1000 - self.clock())
            block_ms = int(min(timeout_s, MAX_BLOCK_S) * 1000)
            if block_ms <= 0:
                return
            got = client.xread({self.keys.events: self._last_event}, count=100, block=block_ms)
        if got:
            self._last_event = got[0][1][-1][0]

    def renew(self, lease: Lease, lease_s: float) -> None:
        deadline_ms = ms(self.clock() + lease_s)
        if not self.connection.run("renew", lease.task_id, lease.token, deadline_ms):
            raise _lost(lease)
        lease.deadline_s = deadline_ms / 1000

    def ack(self, lease: Lease, result: dict[str, Any]) -> None:
        from tracemind.queue.records import completion_entry

        now_s = self.clock()
        line = dumps(completion_entry(lease.attempt, lease.token, result, now_s))
        outcome = self.connection.run("ack", lease.task_id, lease.token, line, ms(now_s))
        if int(outcome) == 2:
            self._log.warning("task acknowledged after its lease was lost", task_id=lease.task_id)

    def flush(self) -> None:
        """Nothing to wait for: an ack is as durable as the server's persistence setting when
        its script returns (see docs/queue-format.md)."""

    def retry(self, lease: Lease, failure: Failure, delay_s: float) -> None:
        now_s = self.clock()
        record = with_failure(lease.record, lease.attempt, failure, now_s)
        args = (lease.task_id, lease.token, dumps(record), ms(now_s + delay_s))
        if not self.connection.run("retry", *args):
            raise _lost(lease)

    def dead_letter(self, lease: Lease, failure: Failure) -> None:
        now_s = self.clock()
        entry = dead_entry(lease.record, lease.attempt, lease.token, failure, now_s)
        args = (lease.task_id, lease.token, "", "dead", dumps(entry), ms(now_s))
        if not self.connection.run("end_lease", *args):
            raise _lost(lease)

    def cancel_requested(self, task_id: str) -> bool:
        with self.connection.errors():
            flag: str | None = self.connection.client.hget(self.keys.task(task_id), "cancel")
        return flag == "1"

    def cancel_leased(self, lease: Lease) -> None:
        args = (lease.task_id, lease.token, "", "cancelled", "", ms(self.clock()))
        if not self.connection.run("end_lease", *args):
            raise _lost(lease)

    def recover(self, dead_consumers: Iterable[str] = ()) -> int:
        now_ms = ms(self.clock())
        dead = tuple(dead_consumers)
        client = self.connection.client
        with self.connection.errors():
            due = client.zrangebyscore(self.keys.leases, "-inf", now_ms, 0, RECOVER_LIMIT)
            if dead:
                held = client.zrange(self.keys.leases, 0, -1)
                pipe = client.pipeline(transaction=False)
                for task_id in held:
                    pipe.hget(self.keys.task(task_id), "consumer")
                owners = pipe.execute()
                due += [t for t, c in zip(held, owners, strict=True) if c and _matches(c, dead)]
        return sum(1 for task_id in dict.fromkeys(due) if self._recover_one(task_id, now_ms, dead))

    def _recover_one(self, task_id: str, now_ms: int, dead: tuple[str, ...]) -> bool:
        fields = ("state", "token", "deadline_ms", "consumer", "attempts", "record")
        with self.connection.errors():
            state, token, deadline, consumer, attempts, text = self.connection.client.hmget(
                self.keys.task(task_id), fields
            )
        if state != "inflight" or deadline is None:
            return False
        if int(deadline) > now_ms and not (consumer and _matches(consumer, dead)):
            return False
        attempt = count_of(int(attempts or 0))
        try:
            record = json.loads(text)
        except (TypeError, ValueError):
            record = {}
        outcome, entry = "return", ""
        if attempt >= max_attempts_of(record if isinstance(record, dict) else {}):
            outcome = "dead"
            entry = dumps(dead_entry(record, attempt, token, Failure(LOST_ERROR), now_ms / 1000))
        args = (task_id, token, deadline, outcome, entry, now_ms)
        if not self.connection.run("end_lease", *args):
            return False  # renewed or finished in the meantime
        if outcome == "dead":
            self._log.error("task dead-lettered: its last attempt was lost", task_id=task_id)
        else:
            self._log.warning(
                "lease returned to the queue", task_id=task_id, attempt=attempt, consumer=consumer
            )
        return True

    def maintain(self) -> None:
        """Move due tasks into the stream, so readers and leases find them there; now and then
        forget the consumer names of workers gone for a while."""
        self.connection.run("promote", ms(self.clock()), PROMOTE_LIMIT)
        now_s = time.monotonic()
        if now_s >= self._next_forget_s:
            self._next_forget_s = now_s + CONSUMER_IDLE_S
            self.forget_idle_consumers(CONSUMER_IDLE_S)

    def forget_idle_consumers(self, idle_s: float) -> int:
        """Delete the consumer group's consumers that hold no lease and were idle ``idle_s``
        (by the server's clock: only upkeep, never a lease, depends on it); how many."""
        return int(self.connection.run("forget_consumers", ms(idle_s)))

    # -- readers (never create or modify anything) ----------------------------------------------

    def counts(self) -> tuple[QueueStats, int, int]:
        """(:meth:`stats`, dead letters, damaged dead letters) in one script; read-only."""
        now_ms = ms(self.clock())
        pending, delayed, inflight, oldest_ms, dead, damaged = self.connection.run("counts", now_ms)
        age = None if int(oldest_ms) < 0 else max(0.0, (now_ms - int(oldest_ms)) / 1000)
        return QueueStats(int(pending), int(delayed), int(inflight), age, int(damaged)), dead, 0

    def stats(self) -> QueueStats:
        """Exact counts from XLEN, XPENDING, ZCOUNT and ZCARD: O(log n); read-only."""
        return self.counts()[0]

    def has_waiting(self) -> bool:
        stats = self.stats()
        return stats.pending + stats.delayed > 0

    def held_by(self, consumer_prefix: str) -> int:
        """Leases held by consumers whose id starts with ``consumer_prefix`` (from the consumer
        group's pending entries per consumer); read-only."""
        from redis.exceptions import ResponseError

        with self.connection.errors():
            try:
                consumers = self.connection.client.xinfo_consumers(self.keys.ready, GROUP)
            except ResponseError:  # no stream or group yet: nobody holds anything
                return 0
        return sum(
            int(c["pending"]) for c in consumers if str(c["name"]).startswith(consumer_prefix)
        )

    def find(self, task_id: str) -> TaskInfo | None:
        with self.connection.errors():
            fields = self.connection.client.hgetall(self.keys.task(task_id))
        if not fields or "state" not in fields:
            return None
        return task_info(task_id, fields, self.clock())

    def finished(self, task_id: str) -> TaskInfo | None:
        """The task's terminal state (succeeded, dead or cancelled) in O(1); None while it is
        anywhere else or does not exist; read-only."""
        info = self.find(task_id)
        terminal = (TaskStatus.SUCCEEDED, TaskStatus.DEAD, TaskStatus.CANCELLED)
        return info if info is not None and info.status in terminal else None

    def waiting_since(self, epoch_s: float) -> int:
        """Tasks enqueued at or after ``epoch_s`` and never delivered yet, read-only (O(tasks
        enqueued since then))."""
        client = self.connection.client
        since = f"[{ms(epoch_s):012x}"
        with self.connection.errors():
            ids = client.zrangebylex(self.keys.tasks, since, "+")
            pipe = client.pipeline(transaction=False)
            for task_id in ids:
                pipe.hmget(self.keys.task(task_id), ["state", "attempts"])
            replies = pipe.execute() if ids else []
        return sum(1 for state, attempts in replies if state in _WAITING and attempts == "0")

    def newest(
        self, statuses: Collection[TaskStatus], limit: int, *, flow_id: str | None = None
    ) -> list[TaskInfo]:
        """Up to ``limit`` tasks in ``statuses`` (of ``flow_id`` when given), newest first, from
        the index of task ids; looks at no more than :data:`LIST_CAP` tasks; read-only."""
        client = self.connection.client
        now_s = self.clock()
        found: list[TaskInfo] = []
        seen = 0
        while seen < LIST_CAP and len(found) < limit:
            with self.connection.errors():
                ids = client.zrevrangebylex(self.keys.tasks, "+", "-", seen, LIST_CHUNK)
                if not ids:
                    break
                pipe = client.pipeline(transaction=False)
                for task_id in ids:
                    pipe.hgetall(self.keys.task(task_id))
                replies = pipe.execute()
            seen += len(ids)
            for task_id, fields in zip(ids, replies, strict=True):
                info = task_info(task_id, fields, now_s) if fields.get("state") else None
                if info is None or info.status not in statuses:
                    continue
                if flow_id is None or info.record.get("flow_id") == flow_id:
                    found.append(info)
                    if len(found) == limit:
                        break
        return found


def _matches(consumer: str, dead: tuple[str, ...]) -> bool:
    """A consumer id matches an id exactly, or an id prefix given with a trailing ``-``."""
    return any(consumer == d or (d.endswith("-") and consumer.startswith(d)) for d in dead)


def _lost(lease: Lease) -> LeaseLost:
    return LeaseLost(f"task {lease.task_id}: lease lost (expired and recovered)")
