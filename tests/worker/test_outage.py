"""A consumer while its queue's server cannot be reached (QueueUnavailable): it keeps its place,
retries with a bounded backoff, and records every outcome once the server answers again. A
queue stand-in fails chosen verbs a chosen number of times (the real outage, a SIGKILLed
redis-server, is in tests/daemon/test_daemon_redis_outage.py)."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from typing import Any

from tm_testing import FakeClock, make_task
from tracemind.backend.file.stores import Stores
from tracemind.errors import QueueUnavailable
from tracemind.queue.protocol import TaskQueue, TaskStatus
from tracemind.worker.consumer import Consumer
from tracemind.worker.outage import MAX_BACKOFF_S, Outage
from tracemind.worker.runtime import Task

RUN_BOUND_S = 20.0


class FlakyQueue:
    """``inner`` with verbs that raise QueueUnavailable: ``failures[verb]`` more times each."""

    def __init__(self, inner: TaskQueue, failures: dict[str, int]) -> None:
        self.inner = inner
        self.failures = Counter(failures)
        self.calls: Counter[str] = Counter()

    def __getattr__(self, verb: str) -> Any:
        method = getattr(self.inner, verb)

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls[verb] += 1
            if self.failures[verb] > 0:
                self.failures[verb] -= 1
                raise QueueUnavailable("redis 127.0.0.1:1: unreachable (Connection refused)")
            return method(*args, **kwargs)

        return call


class Logs:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def warning(self, event: str, **fields: Any) -> None:
        self.events.append(("warning", event))

    def info(self, event: str, **fields: Any) -> None:
        self.events.append(("info", event))


def _consumer(queue: Any, behaviour: Any, lease_s: float = 30.0) -> tuple[Consumer, list[str]]:
    outcomes: list[str] = []

    class Runtime:
        def execute(self, task: Task) -> Any:
            return behaviour(task)

    consumer = Consumer(
        queue,
        Runtime(),
        "c1",
        lease_s=lease_s,
        rng=random.Random(1),
        on_finished=lambda outcome, *_: outcomes.append(outcome),
    )
    consumer.outage.min_backoff_s = consumer.outage.max_backoff_s = 0.01
    return consumer, outcomes


def _run_until(consumer: Consumer, done: Any) -> None:
    """``consumer.run()`` on a thread until ``done()`` (bounded), then stop it."""
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + RUN_BOUND_S
    while not done() and time.monotonic() < deadline:
        time.sleep(0.01)
    consumer.stopping.set()
    thread.join(RUN_BOUND_S)
    assert not thread.is_alive()


def test_an_ack_that_cannot_reach_the_server_is_recorded_once_it_answers(
    stores: Stores, clock: FakeClock
) -> None:
    # Given a task, and a queue whose next three acks fail as unreachable
    task = make_task(clock)
    stores.queue.enqueue([task])
    queue = FlakyQueue(stores.queue, {"ack": 3})
    consumer, outcomes = _consumer(queue, lambda t: {"ran": t.attempt})
    # When the consumer runs it
    assert consumer.run_once() is True
    # Then the outcome was retried until recorded, once: succeeded, with its result
    assert queue.calls["ack"] == 4
    info = stores.queue.find(task.task_id)
    assert info is not None and info.status is TaskStatus.SUCCEEDED
    assert info.record["result"] == {"ran": 1}
    assert outcomes == ["succeeded"]
    assert consumer.outage.reason is None  # recovered


def test_an_idle_consumer_keeps_looking_while_the_server_is_away(
    stores: Stores, clock: FakeClock
) -> None:
    # Given a task, and a queue whose next 20 leases fail as unreachable
    task = make_task(clock)
    stores.queue.enqueue([task])
    queue = FlakyQueue(stores.queue, {"lease": 20})
    consumer, outcomes = _consumer(queue, lambda t: {})
    # When the consumer runs (in its loop) until the task is done
    _run_until(consumer, lambda: outcomes)
    # Then it survived the failures, took the task once the server answered, and ran it once
    assert queue.calls["lease"] > 20
    assert outcomes == ["succeeded"]
    info = stores.queue.find(task.task_id)
    assert info is not None and (info.status, info.attempts) == (TaskStatus.SUCCEEDED, 1)


def test_renewals_go_on_after_the_server_failed_one(stores: Stores, clock: FakeClock) -> None:
    # Given a queue whose first renewal fails as unreachable, and a task that outlives 3 leases
    task = make_task(clock)
    stores.queue.enqueue([task])
    queue = FlakyQueue(stores.queue, {"renew": 1})

    def long(t: Task) -> Any:
        time.sleep(0.9)  # lease 0.3 s: a renewal is due every 0.1 s
        return {}

    consumer, outcomes = _consumer(queue, long, lease_s=0.3)
    # When it runs
    consumer.run_once()
    # Then the keeper kept renewing after the failure, and the task is settled as its own
    assert queue.calls["renew"] >= 4
    assert not consumer.keeper.lost and outcomes == ["succeeded"]


def test_cancel_requested_is_false_while_the_server_cannot_say(
    stores: Stores, clock: FakeClock
) -> None:
    # Given a running task whose hook asks whether it was cancelled, the server away
    task = make_task(clock)
    stores.queue.enqueue([task])
    queue = FlakyQueue(stores.queue, {"cancel_requested": 1})
    seen: list[bool] = []
    consumer, outcomes = _consumer(queue, lambda t: seen.append(t.cancel_requested()) or {})
    # When it runs
    consumer.run_once()
    # Then the question answered "no" (the task went on) rather than failing the task
    assert seen == [False] and outcomes == ["succeeded"]


def test_an_outage_logs_once_and_its_waits_grow_to_a_bound() -> None:
    logs = Logs()
    outage = Outage(logs, rng=random.Random(7))
    error = QueueUnavailable("redis 127.0.0.1:1: unreachable (Connection refused)")
    waits = [outage.failed(error) for _ in range(12)]
    assert outage.ongoing and outage.reason == str(error)
    assert all(0 < wait_s <= MAX_BACKOFF_S for wait_s in waits)
    assert waits[0] < 0.11 and max(waits[-3:]) > MAX_BACKOFF_S / 2 - 1e-9
    outage.recovered()
    outage.recovered()
    assert logs.events == [
        ("warning", "queue unreachable; retrying until it is back"),
        ("info", "queue reachable again"),
    ]
    assert outage.reason is None
