"""Retry and timeout policy are resolved once, at submit, and carried on the record: workers
apply the record's policy (whatever the flow snapshot says), and resolve it from the snapshot
only for a record written before records carried one."""

from __future__ import annotations

import random
import time
from typing import Any

import pytest

from tm_testing import FakeClock, FlowFiles, make_task
from tracemind.backend.file.stores import Stores
from tracemind.flows import load_flow
from tracemind.queue.protocol import NewTask, TaskStatus
from tracemind.worker.consumer import Consumer
from tracemind.worker.runtime import Task

FLOW_RETRY = {"max_attempts": 3, "base_ms": 1000.0, "factor": 2.0, "jitter_ms": 0.0}


class SleepyRuntime:
    """Sleeps ``sleep_s`` and then fails (when ``fail``) or succeeds."""

    def __init__(self, sleep_s: float = 0.0, fail: bool = False) -> None:
        self.sleep_s = sleep_s
        self.fail = fail

    def execute(self, task: Task) -> Any:
        time.sleep(self.sleep_s)
        if self.fail:
            raise ValueError("failed")
        return {"ok": True}


def _run_once(stores: Stores, runtime: Any) -> str:
    outcomes: list[str] = []
    consumer = Consumer(
        stores.queue,
        runtime,
        "c1",
        lease_s=30.0,
        rng=random.Random(1),
        on_finished=lambda outcome, *_: outcomes.append(outcome),
    )
    assert consumer.run_once()
    [outcome] = outcomes
    return outcome


def _task(clock: FakeClock, policy: dict[str, Any] | None, **flow: Any) -> NewTask:
    """A task whose flow snapshot has ``flow``'s settings and whose record carries ``policy``
    (None: a record of the previous version, without one)."""
    task = make_task(clock)
    task.record["flow"]["flow"].update({"retry": FLOW_RETRY, **flow})
    if policy is not None:
        task.record["policy"] = policy
    return task


def test_a_submitted_task_carries_its_flows_retry_and_timeout_policy(
    stores: Stores, flows: FlowFiles
) -> None:
    retry = {"max_attempts": 5, "base_ms": 50, "factor": 3, "jitter_ms": 7}
    snapshot = load_flow(flows.write("slow", "tracemind.steps.echo", retry=retry, timeout_s=2.5))

    task_id = stores.submitter(60.0).submit(snapshot, {}).task_id

    lease = stores.queue.lease("c1", 30.0)
    assert lease is not None and lease.task_id == task_id
    assert lease.record["policy"] == {
        "retry": {"max_attempts": 5, "base_ms": 50.0, "factor": 3.0, "jitter_ms": 7.0},
        "timeout_s": 2.5,
    }
    assert lease.record["max_attempts"] == 5


def test_a_flow_without_a_timeout_carries_none(stores: Stores, flows: FlowFiles) -> None:
    snapshot = load_flow(flows.write("plain", "tracemind.steps.echo"))
    stores.submitter(60.0).submit(snapshot, {})
    lease = stores.queue.lease("c1", 30.0)
    assert lease is not None and lease.record["policy"]["timeout_s"] is None


def test_the_worker_applies_the_records_timeout_not_the_snapshots(
    stores: Stores, clock: FakeClock
) -> None:
    # Given a task whose record says 0.2 s while its flow snapshot sets no timeout
    task = _task(clock, {"retry": FLOW_RETRY, "timeout_s": 0.2})
    stores.queue.enqueue([task])
    # When a worker runs it for longer
    outcome = _run_once(stores, SleepyRuntime(sleep_s=2.0))
    # Then the record's timeout stopped it
    info = stores.queue.find(task.task_id)
    assert outcome == "retrying"
    assert info is not None and "timeout_s=0.2" in info.record["history"][0]["error"]


def test_the_worker_applies_the_records_backoff_not_the_snapshots(
    stores: Stores, clock: FakeClock
) -> None:
    policy = {"retry": {**FLOW_RETRY, "base_ms": 60_000.0}, "timeout_s": None}
    task = _task(clock, policy)
    stores.queue.enqueue([task])

    assert _run_once(stores, SleepyRuntime(fail=True)) == "retrying"

    info = stores.queue.find(task.task_id)
    assert info is not None and info.status is TaskStatus.DELAYED
    assert info.due_s == pytest.approx(clock() + 60.0, abs=0.001)


def test_a_record_of_the_previous_version_is_resolved_from_its_snapshot(
    stores: Stores, clock: FakeClock
) -> None:
    # Given two records without a policy: one whose flow sets a timeout, one that fails
    slow = _task(clock, None, timeout_s=0.2)
    stores.queue.enqueue([slow])
    assert "policy" not in slow.record
    # Then the flow's timeout applies
    assert _run_once(stores, SleepyRuntime(sleep_s=2.0)) == "retrying"
    info = stores.queue.find(slow.task_id)
    assert info is not None and "timeout_s=0.2" in info.record["history"][0]["error"]
    # And the flow's backoff (1 s) applies
    failing = _task(clock, None)
    stores.queue.enqueue([failing])
    assert _run_once(stores, SleepyRuntime(fail=True)) == "retrying"
    info = stores.queue.find(failing.task_id)
    assert info is not None and info.due_s == pytest.approx(clock() + 1.0, abs=0.001)
