"""One consumer step at a time (``run_once``) on the fake clock: ack, retry with backoff, DLQ,
non-retryable failures, lost leases and flow timeouts."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import pytest

from tm_testing import FakeClock, make_task
from tracemind.backend.file.stores import Stores
from tracemind.flows import FlowSnapshot
from tracemind.queue.protocol import NewTask, TaskStatus
from tracemind.worker.consumer import Consumer
from tracemind.worker.runtime import FlowRuntime, NonRetryable, Task

RETRY = {"max_attempts": 3, "base_ms": 1000.0, "factor": 2.0, "jitter_ms": 0.0}


class ScriptedRuntime:
    """Runs ``behaviour(task)`` and remembers every task it saw."""

    def __init__(self, behaviour: Callable[[Task], Any]) -> None:
        self.behaviour = behaviour
        self.seen: list[Task] = []

    def execute(self, task: Task) -> Any:
        self.seen.append(task)
        return self.behaviour(task)


def _task(clock: FakeClock, **flow: Any) -> NewTask:
    task = make_task(clock, max_attempts=int(flow.get("retry", RETRY)["max_attempts"]))
    task.record["flow"]["flow"].update({"retry": RETRY, **flow})
    return task


def _consumer(stores: Stores, runtime: Any, lease_s: float = 30.0) -> tuple[Consumer, list[str]]:
    outcomes: list[str] = []
    consumer = Consumer(
        stores.queue,
        runtime,
        "c1",
        lease_s=lease_s,
        rng=random.Random(1),
        on_finished=lambda outcome, *_: outcomes.append(outcome),
    )
    return consumer, outcomes


def _fail(task: Task) -> Any:
    raise ValueError(f"attempt {task.attempt} failed")


def test_run_once_on_an_empty_queue_does_nothing(stores: Stores) -> None:
    consumer, outcomes = _consumer(stores, ScriptedRuntime(lambda task: {}))
    assert consumer.run_once() is False
    assert outcomes == []


def test_a_successful_task_is_acknowledged_with_its_result(
    stores: Stores, clock: FakeClock
) -> None:
    task = _task(clock)
    stores.queue.enqueue([task])
    runtime = ScriptedRuntime(lambda t: {"echo": t.task_id})
    consumer, outcomes = _consumer(stores, runtime)

    assert consumer.run_once() is True

    info = stores.queue.find(task.task_id)
    assert info is not None and info.status is TaskStatus.SUCCEEDED
    assert info.record["result"] == {"echo": task.task_id}
    assert outcomes == ["succeeded"]
    assert [(t.task_id, t.attempt) for t in runtime.seen] == [(task.task_id, 1)]


def test_a_non_dict_result_is_wrapped(stores: Stores, clock: FakeClock) -> None:
    task = _task(clock)
    stores.queue.enqueue([task])
    consumer, _ = _consumer(stores, ScriptedRuntime(lambda t: 7))

    consumer.run_once()

    info = stores.queue.find(task.task_id)
    assert info is not None and info.record["result"] == {"value": 7}


def test_failures_back_off_exponentially_then_dead_letter_with_every_attempt(
    stores: Stores, clock: FakeClock
) -> None:
    # Given a task that always fails, with 3 attempts and 1 s · 2^n backoff (no jitter)
    task = _task(clock)
    stores.queue.enqueue([task])
    consumer, outcomes = _consumer(stores, ScriptedRuntime(_fail))
    # When it fails its first attempt, it is delayed by 1 s
    consumer.run_once()
    info = stores.queue.find(task.task_id)
    assert info is not None and info.status is TaskStatus.DELAYED
    assert info.due_s == pytest.approx(clock() + 1.0, abs=0.001)
    assert consumer.run_once() is False
    # And after the second, by 2 s
    clock.advance(1.0)
    consumer.run_once()
    info = stores.queue.find(task.task_id)
    assert info is not None and info.due_s == pytest.approx(clock() + 2.0, abs=0.001)
    # Then the third failure sends it to the DLQ with the error, traceback and history
    clock.advance(2.0)
    consumer.run_once()
    info = stores.queue.find(task.task_id)
    assert info is not None and info.status is TaskStatus.DEAD
    assert outcomes == ["retrying", "retrying", "dead-lettered"]
    assert info.record["error"] == "ValueError: attempt 3 failed"
    assert "Traceback" in info.record["traceback"]
    assert [h["error"] for h in info.record["history"]] == [
        f"ValueError: attempt {n} failed" for n in (1, 2, 3)
    ]


def test_a_non_retryable_failure_goes_straight_to_the_dlq(stores: Stores, clock: FakeClock) -> None:
    task = _task(clock)
    stores.queue.enqueue([task])

    def refuse(t: Task) -> Any:
        raise NonRetryable("the flow snapshot is invalid")

    consumer, outcomes = _consumer(stores, ScriptedRuntime(refuse))
    consumer.run_once()

    info = stores.queue.find(task.task_id)
    assert info is not None and (info.status, info.attempts) == (TaskStatus.DEAD, 1)
    assert outcomes == ["dead-lettered"]


def test_a_consumer_that_lost_its_lease_does_not_settle_the_task(
    stores: Stores, clock: FakeClock
) -> None:
    # Given a task whose lease expires and is recovered while it runs
    task = _task(clock)
    stores.queue.enqueue([task])

    def stall(t: Task) -> Any:
        clock.advance(10)
        stores.queue.recover()
        time.sleep(0.5)  # the keeper (every lease_s / 3 = 0.1 s) notices the loss
        raise ValueError("failed late")

    consumer, outcomes = _consumer(stores, ScriptedRuntime(stall), lease_s=0.3)
    consumer.run_once()
    # Then the outcome is not recorded: the returned copy is pending for another delivery
    info = stores.queue.find(task.task_id)
    assert info is not None and (info.status, info.attempts) == (TaskStatus.PENDING, 1)
    assert info.record["history"] == []
    assert outcomes == []


def test_a_running_task_keeps_its_lease_while_it_outlives_it(
    stores: Stores, clock: FakeClock
) -> None:
    task = _task(clock)
    stores.queue.enqueue([task])

    def long(t: Task) -> Any:
        for _ in range(5):  # 1 s of fake time (3 lease periods), renewed in between
            time.sleep(0.3)  # the keeper renews every 0.1 s
            clock.advance(0.2)
            assert stores.queue.recover() == 0
        return {"done": True}

    consumer, outcomes = _consumer(stores, ScriptedRuntime(long), lease_s=0.3)
    consumer.run_once()

    assert outcomes == ["succeeded"]


def test_a_task_over_its_flow_timeout_fails_and_is_retried(
    stores: Stores, clock: FakeClock
) -> None:
    task = _task(clock, timeout_s=0.2)
    stores.queue.enqueue([task])
    consumer, _ = _consumer(stores, ScriptedRuntime(lambda t: time.sleep(10)))

    started = time.monotonic()
    consumer.run_once()

    assert time.monotonic() - started < 5
    info = stores.queue.find(task.task_id)
    assert info is not None and info.status is TaskStatus.DELAYED
    assert "timeout_s=0.2" in info.record["history"][0]["error"]


def test_the_flow_runtime_runs_the_snapshot_the_task_carries(
    stores: Stores, clock: FakeClock, echo_snapshot: FlowSnapshot
) -> None:
    result = stores.submitter(60).submit(echo_snapshot, {"hello": "world"})
    consumer, _ = _consumer(stores, FlowRuntime())

    consumer.run_once()

    info = stores.queue.find(result.task_id)
    assert info is not None and info.status is TaskStatus.SUCCEEDED
    assert info.record["result"] == {"hello": "world"}


def test_an_invalid_snapshot_is_not_retried(stores: Stores, clock: FakeClock) -> None:
    task = _task(clock)  # its flow snapshot has no steps
    stores.queue.enqueue([task])
    consumer, outcomes = _consumer(stores, FlowRuntime())

    consumer.run_once()

    assert outcomes == ["dead-lettered"]
