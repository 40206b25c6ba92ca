"""Crashes are real: SIGKILL of a worker, of the daemon, a task that kills its worker, a runtime
that cannot start. Nothing is lost, nothing is orphaned, and ``ps`` tells the truth."""

from __future__ import annotations

import os
import signal
import time

import pytest
from daemon_harness import DaemonEnv, pids_mentioning, process_alive

from tm_testing import wait_until
from tracemind.daemon.identity import start_ticks
from tracemind.worker.pool import YOUNG_S


@pytest.mark.slow
def test_killed_worker_task_completes_on_a_later_attempt(daemon_env: DaemonEnv) -> None:
    # Given: a task running in one of the daemon's workers (30 s on its first attempt)
    daemon_env.start_ok("--workers", "2")
    task_id = daemon_env.enqueue(daemon_env.flow("slow", "sleep_first"), {"seconds": 30})
    [(_, _, worker)] = wait_until(lambda: daemon_env.marks("started", task_id), 30, "the task")
    assert worker in daemon_env.worker_pids()  # heartbeat.json names the worker running it

    # When: that worker is SIGKILLed mid-task
    os.kill(worker, signal.SIGKILL)

    # Then: the task completes on attempt 2, and the pool respawned the worker
    done = daemon_env.wait(task_id)
    assert done["status"] == "succeeded"
    assert done["attempts"] >= 2
    assert done["result"]["attempt_seen"] == done["attempts"]
    wait_until(
        lambda: len(daemon_env.worker_pids()) == 2 and worker not in daemon_env.worker_pids(),
        30,
        "the worker to be respawned",
    )
    events = daemon_env.log_events()
    assert any(e["event"] == "worker died" for e in events)
    assert daemon_env.ps()["running"] is True


@pytest.mark.slow
def test_killed_daemon_leaves_no_workers_and_a_restart_completes_every_task(
    daemon_env: DaemonEnv,
) -> None:
    # Given: a daemon whose 2 workers each run a task, with 2 more tasks waiting
    meta = daemon_env.start_ok("--workers", "2")
    workers = {pid: start_ticks(pid) for pid in daemon_env.worker_pids()}
    flow = daemon_env.flow("slow", "sleep")
    task_ids = [daemon_env.enqueue(flow, {"seconds": 2}) for _ in range(4)]
    wait_until(lambda: len(daemon_env.marks("started")) >= 2, 30, "2 tasks to start")

    # When: the daemon process alone is SIGKILLed (not its process group)
    daemon_env.kill_daemon(meta, group=False)

    # Then: its workers die with it (PR_SET_PDEATHSIG), no process of this queue remains
    wait_until(
        lambda: not any(process_alive(pid, ticks) for pid, ticks in workers.items()),
        10,
        "the workers to die with the daemon",
    )
    wait_until(lambda: not pids_mentioning(str(daemon_env.data_dir)), 10, "no orphans")
    assert daemon_env.ps()["running"] is False
    started = {task_id for task_id, _, _ in daemon_env.marks("started")}
    finished = {task_id for task_id, _, _ in daemon_env.marks("finished")}
    interrupted = started - finished
    assert interrupted, "the kill interrupted running tasks"

    # And: after a new start every task completes; the interrupted ones on a second attempt
    daemon_env.start_ok("--workers", "2")
    for task_id in task_ids:
        done = daemon_env.wait(task_id)
        assert done["status"] == "succeeded"
        if task_id in interrupted:
            assert done["attempts"] >= 2
        assert len(daemon_env.marks("finished", task_id)) == 1


@pytest.mark.slow
def test_restart_returns_the_dead_daemons_leases_at_once(daemon_env: DaemonEnv) -> None:
    # Given: a daemon with 60 s leases running a task when it and its group are SIGKILLed
    meta = daemon_env.start_ok("--workers", "1", "--lease-s", "60")
    task_id = daemon_env.enqueue(daemon_env.flow("slow", "sleep_first"), {"seconds": 60})
    wait_until(lambda: daemon_env.marks("started", task_id), 30, "the task to start")
    daemon_env.kill_daemon(meta, group=True)
    wait_until(lambda: not daemon_env.ps()["running"], 10, "ps to see the daemon gone")
    assert daemon_env.show(task_id)["status"] == "inflight"  # its lease runs for another minute

    # When: a new daemon starts on the stale state
    began = time.monotonic()
    new_meta = daemon_env.start_ok("--workers", "1")

    # Then: the task runs again at once, long before the old lease would have expired
    done = daemon_env.wait(task_id, timeout_s=30)
    assert time.monotonic() - began < 20
    assert done["status"] == "succeeded" and done["attempts"] == 2
    assert new_meta["instance_id"] != meta["instance_id"]
    returned = [
        e for e in daemon_env.log_events() if e["event"] == "returned leases of a dead daemon"
    ]
    assert returned and returned[-1]["previous_instance"] == meta["instance_id"]


@pytest.mark.slow
def test_task_that_kills_its_worker_ends_in_the_dlq(daemon_env: DaemonEnv) -> None:
    # Given: a flow whose step SIGKILLs the worker running it (3 attempts allowed)
    daemon_env.start_ok("--workers", "2")
    flow = daemon_env.flow("killer", "kill_worker", retry={"max_attempts": 3, "base_ms": 10})
    task_id = daemon_env.enqueue(flow)

    # When: the daemon runs it
    proc = daemon_env.tm("task", "wait", task_id, "--timeout", "60", "--json", timeout_s=90)

    # Then: it is dead after its 3 attempts, each in a different worker process
    assert proc.returncode == 1, proc.stdout + proc.stderr  # 1 = dead
    shown = daemon_env.show(task_id)
    assert shown["status"] == "dead"
    assert shown["attempts"] == 3
    marks = daemon_env.marks("started", task_id)
    assert [attempt for _, attempt, _ in marks] == [1, 2, 3]
    assert len({pid for _, _, pid in marks}) == 3
    doc = daemon_env.ps()
    assert doc["running"] is True
    assert doc["dlq"]["pending"] == 1
    assert doc["queue"]["pending"] == 0 and doc["queue"]["inflight"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("factory", ["broken", "exits"])
def test_crash_looping_runtime_shows_in_ps(daemon_env: DaemonEnv, factory: str) -> None:
    # Given: a runtime whose factory raises (or whose worker exits) at start-up
    daemon_env.start_ok("--workers", "2", "--runtime", f"tm_daemon_helpers:{factory}")

    # Then: within a bounded time ps says so: running, but not ready, workers crash-looping
    doc = wait_until(
        lambda: (d := daemon_env.ps())["workers"]["crash_looping"] and d,
        30,
        "ps to report the crash loop",
    )
    assert doc["running"] is True
    assert doc["ready"] is False
    assert "crash" in doc["reason"]
    assert doc["workers"]["configured"] == 2
    deaths = [e for e in daemon_env.log_events() if e["event"] == "worker died"]
    assert len(deaths) >= 3
    assert all(e["exit_code"] != 0 for e in deaths)
    # backoff: the respawns of one slot get further apart
    slot0 = [e["respawn_in_s"] for e in deaths if e["slot"] == 0]
    assert slot0 == sorted(slot0) and slot0[-1] > slot0[0]


@pytest.mark.slow
def test_task_longer_than_several_leases_completes_once(daemon_env: DaemonEnv) -> None:
    # Given: 1 s leases and a task that runs 4 s
    daemon_env.start_ok(
        "--workers", "2", "--lease-s", "1", "--runtime", "tm_daemon_helpers:counting"
    )
    task_id = daemon_env.enqueue(daemon_env.flow("slow", "sleep"), {"seconds": 4})

    # When: it runs to the end
    done = daemon_env.wait(task_id)

    # Then: it succeeded on its first and only attempt (its lease was renewed, never expired)
    assert done["status"] == "succeeded" and done["attempts"] == 1
    assert daemon_env.executions() == {task_id: 1}
    assert len(daemon_env.marks("started", task_id)) == 1
    events = daemon_env.log_events()
    assert not any(e["event"] in ("lease returned to the queue", "worker died") for e in events)


@pytest.mark.slow
def test_pool_that_recovers_from_a_crash_loop_becomes_ready_again(daemon_env: DaemonEnv) -> None:
    # Given: a runtime that cannot start until its dependency comes up
    daemon_env.start_ok("--workers", "1", "--runtime", "tm_daemon_helpers:flaky")
    wait_until(lambda: daemon_env.ps()["workers"]["crash_looping"], 30, "the crash loop")

    # When: the dependency comes up, and tasks run again
    (daemon_env.marks_dir / "runtime-ok").touch()
    task_id = daemon_env.enqueue(daemon_env.flow("noop", "tracemind.steps.echo"))
    assert daemon_env.wait(task_id)["status"] == "succeeded"

    # Then: readiness follows, at the latest once the worker has lived long enough
    wait_until(lambda: daemon_env.ps()["ready"], YOUNG_S + 10, "the daemon to be ready again")
