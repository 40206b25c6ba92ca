"""Real worker pools (``tm workers start``) whose workers die: SIGKILL mid-task, a task that kills
every worker that runs it, and a task that outlives many lease periods."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tm_testing import FlowFiles, Tm, json_lines, read_records, wait_until

pytestmark = pytest.mark.slow


def _events(log: Path, event: str) -> list[dict[str, Any]]:
    return [e for e in json_lines(log) if e.get("event") == event]


def _show(tm: Tm, task_id: str) -> dict[str, Any]:
    return tm.json("task", "show", task_id, "--json")  # type: ignore[no-any-return]


def test_a_worker_killed_mid_task_is_replaced_and_the_task_completes(
    tm: Tm, flows: FlowFiles, record_dir: Path, tmp_path: Path
) -> None:
    # Given a pool running a 1.5 s task under a long lease (20 s)
    flow = flows.write("slow", "tm_test_hooks.record_sleep")
    task_id = tm("enqueue", flow, "-i", '{"seconds": 1.5}').stdout.strip()
    log = tmp_path / "workers.log"
    pool = tm.start("workers", "start", "-n", "1", "--lease-s", "20", "--burst", stdout=log)
    [(_, pid, attempt)] = wait_until(lambda: read_records(record_dir), 30, "the task to start")
    assert attempt == 1
    # When its worker is killed with SIGKILL
    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    # Then the pool returns the lease at once (no waiting for the 20 s lease to expire), a new
    # worker runs the task again as attempt 2, and it succeeds
    assert pool.wait(timeout=60) == 0, log.read_text()
    assert time.monotonic() - killed_at < 15
    shown = _show(tm, task_id)
    assert (shown["status"], shown["attempts"]) == ("succeeded", 2)
    runs = read_records(record_dir)
    assert [a for _, _, a in runs] == [1, 2]
    assert runs[1][1] != pid
    [died] = _events(log, "worker died")
    assert died["leases_returned"] == 1


def test_a_task_that_kills_its_worker_ends_in_the_dlq_after_max_attempts(
    tm: Tm, flows: FlowFiles, record_dir: Path, tmp_path: Path
) -> None:
    # Given a task whose step SIGKILLs the worker running it (3 attempts allowed)
    flow = flows.write("poison", "tm_test_hooks.kill_self", retry={"max_attempts": 3})
    task_id = tm("enqueue", flow).stdout.strip()
    log = tmp_path / "workers.log"
    # When a pool runs until the queue is empty
    pool = tm.start("workers", "start", "-n", "1", "--lease-s", "20", "--burst", stdout=log)
    assert pool.wait(timeout=90) == 0, log.read_text()
    # Then it ran three times, each in another worker, and is dead with three lost attempts
    runs = read_records(record_dir)
    assert [a for _, _, a in runs] == [1, 2, 3], (runs, log.read_text())
    assert len({pid for _, pid, _ in runs}) == 3, (runs, log.read_text())
    shown = _show(tm, task_id)
    assert (shown["status"], shown["attempts"]) == ("dead", 3), (shown, log.read_text())
    dead = tm.json("dlq", "show", task_id)
    assert [h["attempt"] for h in dead["history"]] == [1, 2, 3]
    assert "lease expired" in dead["error"]
    assert len(_events(log, "worker died")) == 3, log.read_text()


def test_a_task_longer_than_many_leases_runs_exactly_once(
    tm: Tm, flows: FlowFiles, record_dir: Path, tmp_path: Path
) -> None:
    # Given a 1 s lease and a task that runs 4 s
    flow = flows.write("long", "tm_test_hooks.record_sleep")
    task_id = tm("enqueue", flow, "-i", '{"seconds": 4}').stdout.strip()
    log = tmp_path / "workers.log"
    # When two workers serve the queue (the idle one would take a lapsed lease)
    pool = tm.start("workers", "start", "-n", "2", "--lease-s", "1", "--burst", stdout=log)
    assert pool.wait(timeout=60) == 0, log.read_text()
    # Then it ran once, renewing its lease, and succeeded on its first attempt
    assert len(read_records(record_dir)) == 1
    shown = _show(tm, task_id)
    assert (shown["status"], shown["attempts"]) == ("succeeded", 1)
    assert _events(log, "lease returned to the queue") == []
    assert _events(log, "lease lost while the task ran") == []


def test_sigterm_drains_the_task_in_progress(
    tm: Tm, flows: FlowFiles, record_dir: Path, tmp_path: Path
) -> None:
    # Given a pool running a 1 s task
    flow = flows.write("drain", "tm_test_hooks.record_sleep")
    task_id = tm("enqueue", flow, "-i", '{"seconds": 1}').stdout.strip()
    log = tmp_path / "workers.log"
    pool = tm.start("workers", "start", "-n", "1", "--lease-s", "20", stdout=log)
    wait_until(lambda: read_records(record_dir), 30, "the task to start")
    # When the pool is asked to stop
    pool.send_signal(signal.SIGTERM)
    # Then the task finishes first, and the pool exits 0
    assert pool.wait(timeout=30) == 0, log.read_text()
    assert _show(tm, task_id)["status"] == "succeeded"
    assert json.loads(tm("queue", "stats", "--json").stdout)["inflight"] == 0
