"""The Redis backend beyond the task queue: idempotency keys, dead letters, retention, cancel,
the registry, counts, read-only readers and its errors (one process, a fake clock, a real
redis-server with a fresh key prefix per test)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tm_testing import FakeClock, make_task
from tracemind.backend import open_backend
from tracemind.errors import NotFound, QueueError, UsageError
from tracemind.flows import FlowSnapshot
from tracemind.queue.protocol import Failure, Lease, TaskStatus
from tracemind.submit import Submission

if TYPE_CHECKING:
    from tracemind.backend.redis import RedisBackend

LEASE_S = 30.0
HOUR_S = 3600.0
DAY_S = 86_400.0


@pytest.fixture
def backend(redis_location: str, clock: FakeClock) -> Iterator[RedisBackend]:
    opened: Any = open_backend(redis_location, durable=True, env={}, clock=clock)
    assert type(opened).__name__ == "RedisBackend"
    yield opened
    opened.close()


def _lease(backend: RedisBackend, consumer: str = "c1") -> Lease:
    lease = backend.queue.lease(consumer, LEASE_S)
    assert lease is not None
    return lease


def _keys(backend: RedisBackend) -> dict[str, Any]:
    """Every key of the backend's prefix with a dump of its value (to prove nothing changed)."""
    client = backend.connection.client
    return {
        key: client.dump(key) for key in client.scan_iter(f"{backend.connection.keys.prefix}:*")
    }


def _status(backend: RedisBackend, task_id: str) -> TaskStatus | None:
    info = backend.queue.find(task_id)
    return None if info is None else info.status


# -- idempotency keys (guarantee 8) --------------------------------------------------------------


def test_a_key_resolves_to_one_task_while_it_waits_runs_or_succeeded_within_the_ttl(
    backend: RedisBackend, echo_snapshot: FlowSnapshot, clock: FakeClock
) -> None:
    submitter = backend.submitter(ttl_s=HOUR_S)
    first = submitter.submit(echo_snapshot, {"n": 1}, idempotency_key="k")
    assert not first.duplicate
    # waiting, then in flight: a duplicate with the same id
    assert submitter.submit(echo_snapshot, {"n": 2}, idempotency_key="k").task_id == first.task_id
    lease = _lease(backend)
    again = submitter.submit(echo_snapshot, {"n": 3}, idempotency_key="k")
    assert (again.task_id, again.duplicate) == (first.task_id, True)
    # succeeded: blocks until the TTL after it finished, not after it was submitted
    clock.advance(HOUR_S / 2)
    backend.queue.ack(lease, {"ok": True})
    clock.advance(HOUR_S - 1)
    assert submitter.submit(echo_snapshot, {}, idempotency_key="k").duplicate
    clock.advance(2)
    fresh = submitter.submit(echo_snapshot, {}, idempotency_key="k")
    assert not fresh.duplicate and fresh.task_id != first.task_id
    assert backend.queue.stats().pending == 1


def test_duplicates_within_one_batch_resolve_to_the_first_and_enqueue_nothing(
    backend: RedisBackend, echo_snapshot: FlowSnapshot
) -> None:
    items = [Submission({"n": n}, idempotency_key=f"k{n % 3}") for n in range(7)]

    results = backend.submitter(ttl_s=HOUR_S).submit_many(echo_snapshot, items)

    assert [r.duplicate for r in results] == [False, False, False, True, True, True, True]
    assert [r.task_id for r in results[3:]] == [results[n % 3].task_id for n in range(3, 7)]
    assert backend.queue.stats().pending == 3


def test_a_batch_bigger_than_one_script_keeps_keys_across_its_chunks(
    backend: RedisBackend, echo_snapshot: FlowSnapshot
) -> None:
    items = [Submission({"n": n}, idempotency_key=f"k{n % 1500}") for n in range(2500)]

    results = backend.submitter(ttl_s=HOUR_S).submit_many(echo_snapshot, items)

    assert sum(1 for r in results if not r.duplicate) == 1500
    assert results[2400].task_id == results[900].task_id
    assert backend.queue.stats().pending == 1500


def test_the_key_of_a_dead_or_cancelled_task_does_not_block(
    backend: RedisBackend, echo_snapshot: FlowSnapshot
) -> None:
    submitter = backend.submitter(ttl_s=HOUR_S)
    dead = submitter.submit(echo_snapshot, {}, idempotency_key="dead").task_id
    backend.queue.dead_letter(_lease(backend), Failure("boom"))
    cancelled = submitter.submit(echo_snapshot, {}, idempotency_key="cancelled").task_id
    assert backend.cancel(cancelled) == "cancelled"

    again = [submitter.submit(echo_snapshot, {}, idempotency_key=k) for k in ("dead", "cancelled")]

    assert [r.duplicate for r in again] == [False, False]
    assert {r.task_id for r in again}.isdisjoint({dead, cancelled})


# -- dead letters (guarantee 9) ------------------------------------------------------------------


def test_dead_letters_are_listed_newest_first_counted_and_got(
    backend: RedisBackend, clock: FakeClock
) -> None:
    ids = []
    for n in range(3):
        ids.append(_put(backend, clock))
        backend.queue.dead_letter(_lease(backend), Failure(f"boom {n}"))
        clock.advance(1)

    entries = backend.dead_letters.newest_first()

    assert [e["task_id"] for e in entries] == ids[::-1]
    assert [e["error"] for e in backend.dead_letters.newest_first(limit=2)] == ["boom 2", "boom 1"]
    assert backend.dead_letters.count() == 3
    got = backend.dead_letters.get(ids[0])
    assert got is not None and got["attempts"] == 1 and got["dead_at"] == entries[-1]["dead_at"]
    assert backend.dead_letters.get("0" * 22) is None
    assert backend.counts()[1:] == (3, 0)


def test_requeue_makes_a_dead_task_pending_once_with_its_history(
    backend: RedisBackend, clock: FakeClock, redis_location: str
) -> None:
    task_id = _put(backend, clock)
    backend.queue.dead_letter(_lease(backend), Failure("boom"))
    other = open_backend(redis_location, durable=True, env={}, clock=clock)

    assert backend.dead_letters.requeue(task_id) is True
    assert other.dead_letters.requeue(task_id) is False
    assert other.dead_letters.purge(task_id) is False

    assert _status(backend, task_id) is TaskStatus.PENDING
    lease = _lease(backend)
    assert (lease.task_id, lease.attempt) == (task_id, 1)
    assert [h["error"] for h in lease.record["history"]] == ["boom"]
    assert "dead_at" not in lease.record
    assert backend.dead_letters.count() == 0


def test_purge_removes_the_entry_and_its_key_and_keeps_an_audit_copy_until_its_ttl(
    backend: RedisBackend, echo_snapshot: FlowSnapshot, clock: FakeClock
) -> None:
    submitter = backend.submitter(ttl_s=HOUR_S)
    task_id = submitter.submit(echo_snapshot, {}, idempotency_key="k").task_id
    backend.queue.dead_letter(_lease(backend), Failure("boom"))

    assert backend.dead_letters.purge(task_id) is True
    assert backend.dead_letters.purge(task_id) is False

    assert backend.queue.find(task_id) is None
    assert backend.dead_letters.count() == 0
    client = backend.connection.client
    assert (
        client.get(f"{backend.connection.keys.prefix}:key:{backend.connection.keys.digest('k')}")
        is None
    )
    assert client.zcard(backend.connection.keys.audit) == 1
    clock.advance(29 * DAY_S)
    assert backend.prune()["dlq_audit"] == 0
    clock.advance(2 * DAY_S)
    assert backend.prune()["dlq_audit"] == 1
    assert client.zcard(backend.connection.keys.audit) == 0


# -- retention (guarantee 10) --------------------------------------------------------------------


def test_prune_removes_results_and_keys_after_their_ttls_and_nothing_that_can_run(
    backend: RedisBackend, echo_snapshot: FlowSnapshot, clock: FakeClock
) -> None:
    # Given a succeeded keyed task, a dead one, one in flight and one waiting
    submitter = backend.submitter(ttl_s=DAY_S)
    done = submitter.submit(echo_snapshot, {}, idempotency_key="done").task_id
    backend.queue.ack(_lease(backend), {"ok": 1})
    dead = submitter.submit(echo_snapshot, {}).task_id
    backend.queue.dead_letter(_lease(backend), Failure("boom"))
    inflight = submitter.submit(echo_snapshot, {}).task_id
    held = _lease(backend)
    waiting = submitter.submit(echo_snapshot, {}, idempotency_key="waiting").task_id
    # When the key TTL (1 day) passes: the key goes, the result stays
    clock.advance(DAY_S + 1)
    backend.queue.renew(held, 8 * DAY_S)
    assert backend.prune(dry_run=True)["keys"] == 1
    removed = backend.prune()
    assert (removed["keys"], removed["results"]) == (1, 0)
    assert _status(backend, done) is TaskStatus.SUCCEEDED
    # When the result TTL (7 days) passes: the result goes, and never anything else
    clock.advance(6 * DAY_S)
    assert backend.prune()["results"] == 1
    assert backend.queue.find(done) is None
    assert [_status(backend, t) for t in (dead, inflight, waiting)] == [
        TaskStatus.DEAD,
        TaskStatus.INFLIGHT,
        TaskStatus.PENDING,
    ]
    assert submitter.submit(echo_snapshot, {}, idempotency_key="waiting").duplicate
    # And the pruned task never runs again, even if its worker acks late
    backend.queue.ack(held, {"late": True})
    assert backend.queue.lease("c2", LEASE_S) is not None  # the waiting one
    assert backend.queue.lease("c2", LEASE_S) is None


def test_prune_stops_at_its_budget(backend: RedisBackend, clock: FakeClock) -> None:
    for _ in range(5):
        _put(backend, clock)
        backend.queue.ack(_lease(backend), {})
    clock.advance(8 * DAY_S)

    assert backend.prune(budget=3)["results"] == 3
    assert backend.prune(budget=3)["results"] == 2


# -- cancel ---------------------------------------------------------------------------------------


def test_cancel_a_waiting_task_a_running_one_and_a_finished_one(
    backend: RedisBackend, clock: FakeClock
) -> None:
    running = _put(backend, clock)
    lease = _lease(backend)
    waiting = _put(backend, clock, due_in_s=60)
    done = _put(backend, clock)
    backend.queue.ack(_lease(backend), {})

    assert backend.cancel(waiting) == "cancelled"
    assert backend.cancel(running) == "requested"
    assert backend.cancel(done) == "succeeded"
    with pytest.raises(NotFound):
        backend.cancel("0" * 22)

    assert backend.queue.cancel_requested(running)
    backend.queue.cancel_leased(lease)
    assert _status(backend, running) is TaskStatus.CANCELLED
    assert backend.cancel(running) == "cancelled"
    clock.advance(120)
    assert backend.queue.lease("c1", LEASE_S) is None
    info = backend.queue.find(waiting)
    assert info is not None and info.record["status"] == "cancelled"


def test_a_lapsed_lease_of_a_task_whose_cancel_was_requested_is_cancelled_not_run(
    backend: RedisBackend, clock: FakeClock
) -> None:
    task_id = _put(backend, clock)
    _lease(backend)
    assert backend.cancel(task_id) == "requested"

    clock.advance(LEASE_S + 1)
    assert backend.queue.recover() == 1

    assert _status(backend, task_id) is TaskStatus.CANCELLED
    assert backend.queue.lease("c2", LEASE_S) is None


# -- registry (guarantee 11) ---------------------------------------------------------------------


def test_a_registration_is_live_everywhere_until_deregistered_or_stale(
    backend: RedisBackend, clock: FakeClock, redis_location: str
) -> None:
    other = open_backend(redis_location, durable=True, env={}, clock=clock)
    backend.registry.register({"instance_id": "d1", "kind": "daemon"})
    backend.registry.register({"instance_id": "d2", "kind": "daemon"})
    clock.advance(5)
    backend.registry.register({"instance_id": "d2", "kind": "daemon"})

    assert [e["instance_id"] for e in other.registry.live()] == ["d1", "d2"]
    clock.advance(6)  # d1 beat 11 s ago: stale
    live = other.registry.live()
    assert [(e["instance_id"], e["heartbeat_age_s"]) for e in live] == [("d2", 6.0)]
    other.registry.deregister("d2")
    assert backend.registry.live() == []


# -- readers never write (guarantee 12), counts -------------------------------------------------


def test_readers_change_nothing(backend: RedisBackend, clock: FakeClock) -> None:
    # Given a queue with a task in every state (one due in the sorted set, not yet in the stream)
    _put(backend, clock)
    backend.queue.dead_letter(_lease(backend), Failure("boom"))
    _put(backend, clock)
    _lease(backend)
    _put(backend, clock, due_in_s=100)
    _put(backend, clock)
    backend.registry.register({"instance_id": "d1"})
    before = _keys(backend)
    # When every reader runs
    stats, dead, damaged = backend.counts()
    backend.queue.stats()
    backend.queue.has_waiting()
    backend.queue.held_by("c")
    for task_id in [e["task_id"] for e in backend.dead_letters.newest_first()]:
        backend.queue.find(task_id)
        backend.dead_letters.get(task_id)
    backend.dead_letters.count()
    backend.registry.live()
    backend.problems()
    # Then every key is as it was
    assert _keys(backend) == before
    assert (stats.pending, stats.delayed, stats.inflight, dead, damaged) == (1, 1, 1, 1, 0)
    assert backend.queue.held_by("c1") == 1


def test_a_reader_of_an_empty_location_creates_nothing(backend: RedisBackend) -> None:
    backend.queue.stats()
    backend.queue.find("0" * 22)
    backend.queue.held_by("")
    backend.dead_letters.newest_first()
    backend.registry.live()

    assert _keys(backend) == {}


def test_an_unreadable_record_is_set_aside_and_hides_no_other_task(
    backend: RedisBackend, clock: FakeClock
) -> None:
    bad = _put(backend, clock)
    clock.advance(0.01)
    good = _put(backend, clock)
    backend.connection.client.hset(backend.connection.keys.task(bad), "record", "{torn")

    lease = _lease(backend)

    assert lease.task_id == good
    assert backend.queue.find(bad) is None
    assert backend.queue.stats().damaged == 1


# -- errors ---------------------------------------------------------------------------------------


def test_an_unreachable_server_is_one_line_naming_host_and_port(clock: FakeClock) -> None:
    from redis_server import free_port

    port = free_port()
    backend = open_backend(f"redis://:s3cret@127.0.0.1:{port}/0", durable=True, env={}, clock=clock)

    with pytest.raises(QueueError) as caught:
        backend.queue.stats()

    with pytest.raises(QueueError) as on_wire:  # (an enqueue: the module's own RESP client)
        backend.queue.enqueue([make_task(clock)])

    message = str(caught.value)
    assert message == f"redis 127.0.0.1:{port}: unreachable (Connection refused)"
    assert str(on_wire.value) == message
    assert backend.problems() == [message]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:notaport/0", "Port could not be cast"),
        ("redis://127.0.0.1:6379/x", "the database is a number"),
        ("redis://127.0.0.1:6379/0?pool=3", "unknown query key 'pool'"),
        ("rediss:///0", "no host"),
    ],
)
def test_a_bad_url_is_a_usage_error(url: str, expected: str) -> None:
    with pytest.raises(UsageError, match=expected):
        open_backend(url, durable=True, env={})


# -- helpers --------------------------------------------------------------------------------------


def _put(backend: RedisBackend, clock: FakeClock, *, due_in_s: float = 0.0) -> str:
    from tm_testing import make_task

    task = make_task(clock, due_in_s=due_in_s, max_attempts=3)
    backend.queue.enqueue([task])
    return task.task_id


def test_a_file_location_never_imports_the_redis_client(tmp_path: Path) -> None:
    code = (
        "import sys; from tracemind.backend import open_backend; "
        f"open_backend('file://{tmp_path}', durable=False).queue.stats(); "
        "print('redis' in sys.modules, 'tracemind.backend.redis' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.split() == ["False", "False"]


def test_consumers_holding_nothing_are_forgotten_and_holders_kept(
    backend: RedisBackend, clock: FakeClock
) -> None:
    _put(backend, clock)
    _put(backend, clock)
    backend.queue.ack(_lease(backend, "gone-1"), {})
    _lease(backend, "busy-1")
    client = backend.connection.client
    keys = backend.connection.keys

    assert backend.queue.forget_idle_consumers(0.0) == 1

    names = [c["name"] for c in client.xinfo_consumers(keys.ready, "tm")]
    assert names == ["busy-1"]
    assert backend.queue.held_by("busy-") == 1


SUBMIT_PROBE = """
import json, sys
from tracemind.backend import open_backend
from tracemind.submit import Submission

class Snapshot:
    flow = {"id": "probe", "retry": {"max_attempts": 3}}

    def to_dict(self):
        return {"flow": self.flow}

backend = open_backend(sys.argv[1], durable=True)
[result] = backend.submitter(3600.0).submit_many(Snapshot(), [Submission({"n": 1})])
print(json.dumps({"task_id": result.task_id, "loaded": sorted(sys.modules)}))
"""
SLOW_ON_SUBMIT = ("redis", "typing", "threading", "hashlib", "pathlib", "datetime", "asyncio")
"""What a submission to a Redis location must not import (``tm enqueue``'s start-up)."""


def test_a_submission_speaks_resp_itself_and_imports_nothing_slow(
    backend: RedisBackend, redis_location: str
) -> None:
    del backend  # (the fixture's location is the one probed; its prefix is fresh)
    out = subprocess.run(
        [sys.executable, "-c", SUBMIT_PROBE, redis_location],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    report = json.loads(out.stdout)

    loaded = set(report["loaded"])
    assert "tracemind.backend.redis.wire" in loaded
    assert loaded.isdisjoint(SLOW_ON_SUBMIT), sorted(loaded & set(SLOW_ON_SUBMIT))
    reader = open_backend(redis_location, durable=True, env={})
    info = reader.queue.find(report["task_id"])
    assert info is not None and info.status is TaskStatus.PENDING


def test_a_forked_child_enqueues_on_its_own_connection(
    backend: RedisBackend, clock: FakeClock
) -> None:
    # Given a parent whose RESP connection is open
    _put(backend, clock)
    parent_id = backend.connection.wire.call("CLIENT", "ID")
    # When a forked child enqueues (and reports the id of the connection it used)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: exit at once whatever happens
        code = 1
        try:
            backend.queue.enqueue([make_task(clock)])
            os.write(write_end, str(backend.connection.wire.call("CLIENT", "ID")).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    _, status = os.waitpid(pid, 0)
    child_id = int(os.read(read_end, 100) or b"0")
    os.close(read_end)
    _put(backend, clock)
    # Then the child used a connection of its own, and every task is there
    assert os.waitstatus_to_exitcode(status) == 0
    assert child_id not in (0, parent_id)
    assert backend.connection.wire.call("CLIENT", "ID") == parent_id
    assert backend.queue.stats().pending == 3


def test_an_idle_consumer_wakes_when_another_process_enqueues(
    backend: RedisBackend, clock: FakeClock, redis_location: str
) -> None:
    # Given an idle consumer that looked once (the first wait only notes where events stand)
    assert backend.queue.lease("c1", LEASE_S) is None
    backend.queue.wait_for_work(0.0)
    producer = open_backend(redis_location, durable=True, env={}, clock=clock)
    timer = threading.Timer(0.3, lambda: producer.queue.enqueue([make_task(clock)]))
    # When another client enqueues while it waits (up to 10 s)
    started = time.monotonic()
    timer.start()
    try:
        backend.queue.wait_for_work(10.0)
    finally:
        timer.join(timeout=10)
    waited_s = time.monotonic() - started
    # Then it woke for it, long before the timeout, and leases the task
    assert 0.2 <= waited_s < 5.0
    assert backend.queue.lease("c1", LEASE_S) is not None


def test_an_idle_consumer_wakes_when_a_delayed_task_falls_due(
    backend: RedisBackend, clock: FakeClock
) -> None:
    _put(backend, clock, due_in_s=0.3)
    backend.queue.wait_for_work(0.0)  # (the first wait only notes where events stand)
    backend.queue.lease("c1", LEASE_S)  # (consumes nothing: not due yet)

    started = time.monotonic()
    backend.queue.wait_for_work(10.0)

    assert 0.2 <= time.monotonic() - started < 5.0


def test_a_deep_backlog_enters_the_stream_a_little_at_a_time(
    backend: RedisBackend, clock: FakeClock
) -> None:
    # Given 3,000 due tasks
    tasks = []
    for _ in range(3000):
        tasks.append(make_task(clock))
        clock.advance(0.001)
    backend.queue.enqueue(tasks)
    client, keys = backend.connection.client, backend.connection.keys
    # When tasks are leased, the stream holds at most 100 waiting entries, oldest due first
    leased = [_lease(backend).task_id for _ in range(250)]
    assert leased == [t.task_id for t in tasks[:250]]
    assert client.xlen(keys.ready) - client.zcard(keys.leases) <= 100
    # And a task that falls due meanwhile waits behind at most those
    early = make_task(clock, due_in_s=-3600.0)
    backend.queue.enqueue([early])
    order = [_lease(backend).task_id for _ in range(101)]
    assert early.task_id in order
    assert backend.queue.stats().pending == 3000 - 250 - 101 + 1


def test_tasks_are_listed_newest_first_by_status_and_flow(
    backend: RedisBackend, clock: FakeClock
) -> None:
    # Given tasks in several states, enqueued one after the other
    ids = []
    for _ in range(6):
        ids.append(_put(backend, clock))
        clock.advance(0.01)
    backend.queue.ack(_lease(backend), {})  # ids[0] succeeded
    backend.queue.dead_letter(_lease(backend), Failure("boom"))  # ids[1] dead
    _lease(backend)  # ids[2] in flight
    assert backend.cancel(ids[3]) == "cancelled"
    # When they are listed
    everything = set(TaskStatus)
    newest = backend.queue.newest(everything, 10)
    waiting = backend.queue.newest({TaskStatus.PENDING}, 10)
    # Then newest first, each with its status; filters by status, limit and flow
    assert [i.task_id for i in newest] == ids[::-1]
    assert [i.status for i in newest][-4:] == [
        TaskStatus.CANCELLED,
        TaskStatus.INFLIGHT,
        TaskStatus.DEAD,
        TaskStatus.SUCCEEDED,
    ]
    assert [i.task_id for i in waiting] == [ids[5], ids[4]]
    assert [i.task_id for i in backend.queue.newest(everything, 2)] == [ids[5], ids[4]]
    assert backend.queue.newest(everything, 10, flow_id="other") == []
    assert len(backend.queue.newest(everything, 10, flow_id="unit")) == 6
    # And finished() knows only the terminal ones
    assert [backend.queue.finished(t) is not None for t in ids] == [
        True,
        True,
        False,
        True,
        False,
        False,
    ]
    # And a purged or pruned task leaves the listing
    assert backend.dead_letters.purge(ids[1])
    clock.advance(8 * DAY_S)
    backend.prune()
    assert [i.task_id for i in backend.queue.newest(everything, 10)] == [ids[5], ids[4], ids[2]]


def test_waiting_since_counts_tasks_enqueued_since_and_never_delivered(
    backend: RedisBackend, clock: FakeClock
) -> None:
    _put(backend, clock)
    clock.advance(10)
    since_s = clock()
    for _ in range(4):
        _put(backend, clock)
    _lease(backend)  # the oldest: before since_s
    _lease(backend)  # one of the four

    assert backend.queue.waiting_since(since_s) == 3
    assert backend.queue.waiting_since(since_s + 1) == 0
