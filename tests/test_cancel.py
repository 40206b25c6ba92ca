"""Cancelling tasks: a waiting task never runs; a task in flight stops before its next step,
or stays succeeded if it finished first; a finished task cannot be cancelled."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from tm_testing import FakeClock, Tm, make_task, read_records, wait_until
from tracemind.backend.file.stores import Stores
from tracemind.client import Client
from tracemind.config import DataDirs
from tracemind.errors import NotFound, TraceMindError
from tracemind.queue.protocol import Failure, TaskStatus

LEASE_S = 30.0


def test_a_pending_or_delayed_task_is_cancelled_and_never_leased(
    stores: Stores, clock: FakeClock
) -> None:
    due, delayed = make_task(clock), make_task(clock, due_in_s=60)
    stores.queue.enqueue([due, delayed])

    assert [stores.queue.cancel(t.task_id) for t in (due, delayed)] == ["cancelled"] * 2

    clock.advance(120)
    assert stores.queue.lease("c1", LEASE_S) is None
    for task in (due, delayed):
        info = stores.queue.find(task.task_id)
        assert info is not None and info.status is TaskStatus.CANCELLED
        assert isinstance(info.record.get("cancelled_at"), float)
    assert stores.queue.stats().to_dict()["pending"] == 0


def test_a_task_in_flight_is_asked_to_stop_and_a_later_copy_is_cancelled_not_run(
    stores: Stores, clock: FakeClock
) -> None:
    # Given a task in flight when it is cancelled
    task = make_task(clock)
    stores.queue.enqueue([task])
    lease = stores.queue.lease("c1", LEASE_S)
    assert lease is not None
    assert stores.queue.cancel(task.task_id) == "requested"
    assert stores.queue.cancel_requested(task.task_id)
    # When its attempt fails and is retried (the worker did not stop in time)
    stores.queue.retry(lease, Failure("boom"), 0.0)
    # Then the retry copy is cancelled instead of delivered
    assert stores.queue.lease("c2", LEASE_S) is None
    info = stores.queue.find(task.task_id)
    assert info is not None and info.status is TaskStatus.CANCELLED
    assert not stores.queue.cancel_requested(task.task_id)


def test_recovery_of_a_lease_with_a_cancel_request_cancels_it(
    stores: Stores, clock: FakeClock
) -> None:
    task = make_task(clock)
    stores.queue.enqueue([task])
    assert stores.queue.lease("dead-0", LEASE_S) is not None
    assert stores.queue.cancel(task.task_id) == "requested"
    stores.queue.recover(["dead-0"])
    info = stores.queue.find(task.task_id)
    assert info is not None and info.status is TaskStatus.CANCELLED
    assert stores.queue.lease("c2", LEASE_S) is None


def test_a_task_that_finished_before_it_stopped_stays_succeeded(
    stores: Stores, clock: FakeClock
) -> None:
    task = make_task(clock)
    stores.queue.enqueue([task])
    lease = stores.queue.lease("c1", LEASE_S)
    assert lease is not None
    assert stores.queue.cancel(task.task_id) == "requested"
    stores.queue.ack(lease, {"ok": True})
    info = stores.queue.find(task.task_id)
    assert info is not None and info.status is TaskStatus.SUCCEEDED
    assert stores.queue.cancel(task.task_id) == "finished"


def test_the_client_says_what_it_could_not_cancel(dirs: DataDirs, clock: FakeClock) -> None:
    client = Client(dirs.queue.parent, clock=clock)
    with pytest.raises(NotFound):
        client.cancel("0" * 22)
    queue = client._backend.queue
    task = make_task(clock, max_attempts=1)
    queue.enqueue([task])
    lease = queue.lease("c1", LEASE_S)
    assert lease is not None
    queue.dead_letter(lease, Failure("boom"))
    with pytest.raises(TraceMindError, match="already dead"):
        client.cancel(task.task_id)


def test_tm_task_cancel_reports_each_task_and_exits_1_for_a_finished_one(
    tm: Tm, flows: Any
) -> None:
    flow = flows.write("echo", "tracemind.steps.echo")
    waiting = tm.json("enqueue", flow, "--delay", "1h", "--json")["task_id"]
    out = tm.json("task", "cancel", waiting, "--json")
    assert out == {"cancelled": [waiting], "requested": [], "errors": {}}
    assert tm.json("task", "show", waiting, "--json")["status"] == "cancelled"
    again = tm("task", "cancel", waiting)
    assert again.returncode == 1 and again.stderr.count("\n") == 1
    assert "already cancelled" in again.stderr and "Traceback" not in again.stderr
    waited = tm("task", "wait", waiting, "--timeout", "5")
    assert waited.returncode == 1  # cancelled: not succeeded


@pytest.mark.slow
def test_cancels_racing_a_worker_pool_never_run_a_task_cancelled_while_waiting(
    tm: Tm, flows: Any, dirs: DataDirs, record_dir: Any, processes: Any, tmp_path: Any
) -> None:
    # Given 300 tasks of 20 ms each and a burst pool of 2 workers that has begun draining them
    flow = flows.write("rec", "tm_test_hooks.record_sleep")
    batch = tmp_path / "batch.jsonl"
    batch.write_text("".join(json.dumps({"seconds": 0.02, "n": n}) + "\n" for n in range(300)))
    ids = tm.json("enqueue", flow, "--inputs", batch, "--json")["task_ids"]
    pool = processes.start(
        [*tm.command(["workers", "start", "-n", "2", "--burst"])],
        env=tm.env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_until(lambda: read_records(record_dir), 120, "the pool's first task")
    # When another process cancels every task, last first, while the pool runs
    cancel = tm("task", "cancel", *ids[::-1], "--json", timeout_s=120)
    assert pool.wait(timeout=120) == 0
    outcome = json.loads(cancel.stdout)
    # Then a task cancelled while it waited never ran; one cancelled in flight stopped after
    # its step (cancelled) or had finished it (succeeded); every other task ran once
    runs = {task_id for task_id, _, _ in read_records(record_dir)}
    client = Client(dirs.queue.parent)
    statuses = {t: info.status for t in ids if (info := client.get(t)) is not None}
    cancelled = {t for t, s in statuses.items() if s is TaskStatus.CANCELLED}
    succeeded = {t for t, s in statuses.items() if s is TaskStatus.SUCCEEDED}
    waiting, in_flight = set(outcome["cancelled"]), set(outcome["requested"])
    assert waiting <= cancelled and waiting.isdisjoint(runs)
    assert in_flight <= runs and in_flight <= cancelled | succeeded
    assert cancelled & runs <= in_flight
    assert succeeded == runs - cancelled
    assert len(runs) == len(read_records(record_dir))  # each ran at most once
    assert cancelled | runs == set(ids) and waiting and runs  # the race really happened
    assert set(outcome["errors"]) <= runs  # "already finished" only for tasks that ran
