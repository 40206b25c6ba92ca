"""start / ps / stop of a real daemon: tasks run, one daemon per state dir, graceful drain."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
from daemon_harness import ECHO_FLOW, DaemonEnv, daemon_pids, process_alive

from tm_testing import tm_command, wait_until
from tracemind.daemon.identity import is_same_process


def test_tasks_enqueued_after_start_are_run(daemon_env: DaemonEnv) -> None:
    # Given: a detached daemon with 2 workers
    meta = daemon_env.start_ok("--workers", "2")
    pid = meta["pid"]
    assert (daemon_env.state_dir / "daemon.pid").read_text().strip() == str(pid)
    doc = daemon_env.ps()
    assert (
        doc["running"] is True and doc["pid"] == pid and doc["instance_id"] == meta["instance_id"]
    )
    assert doc["workers"]["configured"] == 2
    workers = daemon_env.worker_pids()
    assert len(workers) == 2

    # When: tasks are enqueued only now
    flow = daemon_env.root / "echo.json"
    flow.write_text(json.dumps(ECHO_FLOW))
    task_ids = [daemon_env.enqueue(flow, {"n": n}) for n in range(3)]

    # Then: each is run, once
    for n, task_id in enumerate(task_ids):
        done = daemon_env.wait(task_id)
        assert done["status"] == "succeeded"
        assert done["result"] == {"n": n}
        assert done["attempts"] == 1

    # And: stop drains, the daemon and its workers are gone, ps says so
    stopped = daemon_env.stop()
    assert stopped.returncode == 0, stopped.stderr
    assert f"daemon stopped (pid {pid})" in stopped.stdout
    doc = daemon_env.ps()
    assert doc["running"] is False and doc["state"] == "stopped"
    assert doc["queue"]["pending"] == 0 and doc["queue"]["inflight"] == 0
    wait_until(
        lambda: not any(process_alive(p) for p in [pid, *workers]), 10, "the processes to exit"
    )


def test_stop_when_nothing_runs_exits_0(daemon_env: DaemonEnv) -> None:
    proc = daemon_env.stop()

    assert proc.returncode == 0
    assert "not running" in proc.stdout
    assert not daemon_env.state_dir.exists()  # stop is read-only when there is nothing to stop


def test_stop_after_the_daemon_stopped_exits_0(daemon_env: DaemonEnv) -> None:
    daemon_env.start_ok("--workers", "1")
    assert daemon_env.stop().returncode == 0

    again = daemon_env.stop()

    assert again.returncode == 0
    assert "not running" in again.stdout


def test_second_start_reports_the_running_daemon(daemon_env: DaemonEnv) -> None:
    # Given: a running daemon
    meta = daemon_env.start_ok("--workers", "1")

    # When: start runs again
    again = daemon_env.start("--workers", "1")

    # Then: exit 0, it names the running daemon's PID, and it started nothing
    assert again.returncode == 0, again.stderr
    assert f"already running (pid {meta['pid']})" in again.stdout
    assert "started" not in again.stdout
    assert daemon_env.meta() == meta
    assert daemon_pids(daemon_env.state_dir) == [meta["pid"]]


def test_concurrent_starts_make_one_daemon(daemon_env: DaemonEnv) -> None:
    # Given: two starts racing on one state dir
    cmd = [
        *tm_command(),
        "daemon", "start", "--workers", "1", "--state-dir", str(daemon_env.state_dir),
    ]  # fmt: skip
    procs = [
        subprocess.Popen(
            cmd, env=daemon_env.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [proc.communicate(timeout=60) for proc in procs]
    daemon_env.remember(daemon_env.state_dir)

    # Then: both exit 0, both name the same PID, exactly one says it started a daemon
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    meta = daemon_env.meta()
    assert meta is not None
    assert all(f"(pid {meta['pid']})" in out for out, _ in outputs), outputs
    assert sum("daemon started" in out for out, _ in outputs) == 1, outputs
    assert daemon_pids(daemon_env.state_dir) == [meta["pid"]]
    assert daemon_env.ps()["running"] is True


def test_bad_runtime_fails_start_with_the_log(daemon_env: DaemonEnv) -> None:
    # When: the runtime cannot be imported
    proc = daemon_env.start("--runtime", "no_such_module_here:factory")

    # Then: nonzero exit, the log path and its last lines (naming the problem), no "started"
    assert proc.returncode != 0
    assert "started" not in proc.stdout
    assert str(daemon_env.log_path) in proc.stderr
    assert "no_such_module_here" in proc.stderr
    assert "daemon failed" in proc.stderr  # a line of the log's tail
    doc = daemon_env.ps()
    assert doc["running"] is False
    assert daemon_pids(daemon_env.state_dir) == []


def test_unusable_data_dir_fails_start(daemon_env: DaemonEnv) -> None:
    # Given: a queue dir below a regular file
    blocker = daemon_env.root / "not-a-dir"
    blocker.write_text("")

    proc = daemon_env.start("--queue-dir", str(blocker / "queue"))

    # Then: one line naming the directory, before any daemon is launched
    assert proc.returncode == 1
    assert "started" not in proc.stdout
    [line] = proc.stderr.splitlines()
    assert line.startswith(f"tm: error: {blocker / 'queue'}: not writable")
    assert "not a directory" in line.lower()
    assert daemon_pids(daemon_env.state_dir) == []


@pytest.mark.slow
def test_graceful_stop_lets_the_running_task_finish(daemon_env: DaemonEnv) -> None:
    # Given: a foreground daemon (our child, so we see its exit code) running a 2 s task
    daemon = daemon_env.start_foreground("--workers", "1")
    wait_until(lambda: daemon_env.ps()["running"], 30, "the daemon's first heartbeat")
    workers = daemon_env.worker_pids()
    task_id = daemon_env.enqueue(daemon_env.flow("slow", "sleep"), {"seconds": 2})
    wait_until(lambda: daemon_env.marks("started", task_id), 30, "the task to start")

    # When: stop is called while the task runs
    began = time.monotonic()
    proc = daemon_env.stop()

    # Then: the task finished (once), the daemon exited 0, its workers are gone
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "daemon stopped" in proc.stdout
    assert daemon.wait(timeout=10) == 0
    assert time.monotonic() - began < 8
    shown = daemon_env.show(task_id)
    assert shown["status"] == "succeeded" and shown["attempts"] == 1
    assert len(daemon_env.marks("finished", task_id)) == 1
    assert not any(process_alive(pid) for pid in workers)
    events = [e["event"] for e in daemon_env.log_events()]
    assert events.index("drain begin") < events.index("task succeeded") < events.index("drain end")
    drain_end = next(e for e in daemon_env.log_events() if e["event"] == "drain end")
    assert drain_end["drained"] is True


@pytest.mark.slow
def test_task_longer_than_the_drain_timeout_goes_back_to_the_queue(daemon_env: DaemonEnv) -> None:
    # Given: a daemon with a 1 s drain timeout running a task that takes 30 s on its first attempt
    daemon_env.start_ok("--workers", "1", "--drain-timeout", "1")
    workers = daemon_env.worker_pids()
    task_id = daemon_env.enqueue(daemon_env.flow("slow", "sleep_first"), {"seconds": 30})
    wait_until(lambda: daemon_env.marks("started", task_id), 30, "the task to start")

    # When: the daemon is stopped
    began = time.monotonic()
    proc = daemon_env.stop()

    # Then: the stop took about the drain timeout, the task is pending again (not lost, not dead)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert time.monotonic() - began < 6
    assert "daemon stopped" in proc.stdout
    assert not any(process_alive(pid) for pid in workers)
    shown = daemon_env.show(task_id)
    assert shown["status"] == "pending"
    assert shown["attempts"] == 1
    queue = daemon_env.ps()["queue"]
    assert (queue["pending"], queue["inflight"], queue["delayed"]) == (1, 0, 0)

    # And: after a restart it completes, on its second attempt
    daemon_env.start_ok("--workers", "1")
    done = daemon_env.wait(task_id)
    assert done["status"] == "succeeded" and done["attempts"] == 2
    assert done["result"]["attempt_seen"] == 2


@pytest.mark.slow
def test_ps_reports_busy_workers_and_the_drain(daemon_env: DaemonEnv) -> None:
    # Given: a daemon running one 3 s task
    meta = daemon_env.start_ok("--workers", "2", "--drain-timeout", "8")
    task_id = daemon_env.enqueue(daemon_env.flow("slow", "sleep"), {"seconds": 3})
    wait_until(lambda: daemon_env.marks("started", task_id), 30, "the task to start")

    # Then: ps --json has the documented fields, one worker busy, one task in flight
    doc = daemon_env.ps()
    assert doc["running"] is True and doc["ready"] is True and doc["draining"] is False
    assert doc["pid"] == meta["pid"] and doc["host"] == meta["host"]
    assert doc["started_at"] == meta["started_at"] and doc["started_at"].endswith("Z")
    assert 0 <= doc["heartbeat_age_s"] < 5
    assert doc["workers"] == {"configured": 2, "alive": 2, "busy": 1, "crash_looping": False}
    assert doc["queue"]["inflight"] == 1 and doc["queue"]["pending"] == 0
    assert doc["dlq"] == {"pending": 0}
    assert doc["triggers"] == [] and doc["status_url"] is None
    table = daemon_env.tm_ok("daemon", "ps", "--state-dir", daemon_env.state_dir)
    assert f"daemon: running  pid {meta['pid']}" in table
    assert "workers: 2/2 alive, 1 busy; ready" in table

    # When: a stop is under way
    stopping = subprocess.Popen(
        [*tm_command(), "daemon", "stop", "--state-dir", str(daemon_env.state_dir)],
        env=daemon_env.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Then: ps says draining and not ready, until the daemon is gone
        draining = wait_until(
            lambda: (d := daemon_env.ps())["draining"] and d, 10, "ps to report the drain"
        )
        assert draining["ready"] is False and draining["reason"] == "draining"
        out, err = stopping.communicate(timeout=30)
    finally:
        if stopping.poll() is None:
            stopping.kill()
            stopping.wait(timeout=10)
    assert stopping.returncode == 0, out + err
    assert daemon_env.show(task_id)["status"] == "succeeded"
    assert "daemon: not running" in daemon_env.ps_table()


@pytest.mark.slow
def test_paused_daemon_is_unresponsive_and_stop_escalates(daemon_env: DaemonEnv) -> None:
    # Given: a daemon running a long task, then paused (as `docker pause` would)
    meta = daemon_env.start_ok("--workers", "1")
    workers = daemon_env.worker_pids()
    task_id = daemon_env.enqueue(daemon_env.flow("slow", "sleep_first"), {"seconds": 60})
    wait_until(lambda: daemon_env.marks("started", task_id), 30, "the task to start")
    assert is_same_process(meta)
    os.kill(meta["pid"], signal.SIGSTOP)  # the teardown's stop kills it if the test fails

    # Then: once the heartbeat is stale, ps says unresponsive (lock held), not running
    doc = wait_until(
        lambda: (d := daemon_env.ps())["state"] == "unresponsive" and d, 15, "a stale heartbeat"
    )
    assert doc["running"] is False and doc["heartbeat_age_s"] > 5

    # And: start does not launch a second daemon beside it, nor calls it running: it does not
    # answer, and start says so (naming the lock's holder) with exit 1
    again = daemon_env.start("--workers", "1")
    assert again.returncode == 1, again.stdout + again.stderr
    assert "already running" not in again.stdout + again.stderr
    [line] = again.stderr.splitlines()
    assert "no daemon answers" in line and "unresponsive" in line
    assert f"pid {meta['pid']} " in line
    assert daemon_pids(daemon_env.state_dir) == [meta["pid"]]

    # And: stop --no-force gives up after its timeout, leaving it alone
    gentle = daemon_env.stop("--timeout", "1", "--no-force")
    assert gentle.returncode == 1
    assert "still running" in gentle.stderr
    assert process_alive(meta["pid"])

    # When: stop may escalate (the daemon is still paused: the stop request is never picked up)
    forced = daemon_env.stop("--timeout", "1")

    # Then: the daemon and its workers are killed, and the task's lease is back in the queue
    assert forced.returncode == 0, forced.stderr
    assert "daemon killed" in forced.stdout
    wait_until(lambda: not any(process_alive(p) for p in [meta["pid"], *workers]), 10, "the kill")
    shown = daemon_env.show(task_id)
    assert shown["status"] == "pending" and shown["attempts"] == 1
    assert daemon_env.ps()["state"] == "stopped"


@pytest.mark.slow
def test_ps_says_draining_throughout_a_long_drain(daemon_env: DaemonEnv) -> None:
    # Given: a daemon draining a task that needs 8 more seconds
    daemon_env.start_ok("--workers", "1", "--drain-timeout", "20")
    task_id = daemon_env.enqueue(daemon_env.flow("slow", "sleep"), {"seconds": 9})
    wait_until(lambda: daemon_env.marks("started", task_id), 30, "the task to start")
    stopping = subprocess.Popen(
        [
            *tm_command(),
            "daemon",
            "stop",
            "--timeout",
            "30",
            "--state-dir",
            str(daemon_env.state_dir),
        ],
        env=daemon_env.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: daemon_env.ps()["draining"], 10, "the drain to begin")

        # When: the drain has lasted longer than a heartbeat may be stale
        time.sleep(6.5)

        # Then: ps still says running and draining
        doc = daemon_env.ps()
        assert (doc["state"], doc["draining"]) == ("running", True)
    finally:
        assert stopping.wait(timeout=30) == 0
    assert daemon_env.show(task_id)["status"] == "succeeded"


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_second_signal_stops_fast_and_returns_leases(
    daemon_env: DaemonEnv, signum: signal.Signals
) -> None:
    # Given: a foreground daemon (our child) with a long drain timeout, running a long task
    daemon = daemon_env.start_foreground("--workers", "1", "--drain-timeout", "60")
    wait_until(lambda: daemon_env.ps()["running"], 30, "the daemon's first heartbeat")
    workers = daemon_env.worker_pids()
    task_id = daemon_env.enqueue(daemon_env.flow("slow", "sleep_first"), {"seconds": 60})
    wait_until(lambda: daemon_env.marks("started", task_id), 30, "the task to start")

    # When: the first signal starts a drain, and a second one arrives
    daemon.send_signal(signum)
    wait_until(lambda: daemon_env.ps()["draining"], 10, "the drain to begin")
    began = time.monotonic()
    daemon.send_signal(signum)

    # Then: the daemon exits 0 at once, its workers are gone, the task is pending again
    assert daemon.wait(timeout=10) == 0
    assert time.monotonic() - began < 5
    assert not any(process_alive(pid) for pid in workers)
    shown = daemon_env.show(task_id)
    assert shown["status"] == "pending" and shown["attempts"] == 1
    names = [e["event"] for e in daemon_env.log_events()]
    assert names.count("drain requested") == 1 and "fast stop requested" in names


@pytest.mark.slow
def test_repeated_stop_no_force_never_kills_the_running_task(daemon_env: DaemonEnv) -> None:
    # Given: a daemon draining slowly (a 4 s task, 30 s drain timeout)
    daemon_env.start_ok("--workers", "1", "--drain-timeout", "30")
    task_id = daemon_env.enqueue(daemon_env.flow("slow", "sleep"), {"seconds": 4})
    wait_until(lambda: daemon_env.marks("started", task_id), 30, "the task to start")

    # When: an impatient user runs `stop --no-force` twice before the task is done
    first = daemon_env.stop("--timeout", "1", "--no-force")
    second = daemon_env.stop("--timeout", "1", "--no-force")

    # Then: both give up (exit 1) and the task still finishes, on its first attempt
    assert (first.returncode, second.returncode) == (1, 1), first.stdout + second.stdout
    wait_until(lambda: daemon_env.ps()["state"] == "stopped", 20, "the drain to end")
    shown = daemon_env.show(task_id)
    assert shown["status"] == "succeeded" and shown["attempts"] == 1
    names = [e["event"] for e in daemon_env.log_events()]
    assert "fast stop requested" not in names
    assert names[-1] == "daemon stopped"
