"""The daemon's log: one JSON object per line, task context on task lines, lifecycle events,
and SIGHUP reopens the file (logrotate's ``create`` mode)."""

from __future__ import annotations

import os
import signal
from datetime import datetime, timedelta

import pytest
from daemon_harness import DaemonEnv

from tm_testing import wait_until
from tracemind.daemon.identity import is_same_process

LIFECYCLE = ["daemon started", "worker spawned", "drain begin", "drain end", "daemon stopped"]


@pytest.mark.slow
def test_every_log_line_is_a_json_event(daemon_env: DaemonEnv) -> None:
    # Given: a daemon run that executes a succeeding and a failing task, then stops
    daemon_env.start_ok("--workers", "2")
    ok = daemon_env.enqueue(daemon_env.flow("greet", "tracemind.steps.greet"), {"name": "log"})
    failing = daemon_env.enqueue(
        daemon_env.flow("failing", "tracemind.steps.fail", retry={"max_attempts": 2, "base_ms": 1})
    )
    daemon_env.wait(ok)
    assert daemon_env.tm("task", "wait", failing, "--timeout", "30").returncode == 1
    assert daemon_env.stop().returncode == 0

    # When: the log is read
    events = daemon_env.log_events()  # fails on any line that is not a JSON object

    # Then: every line has an ISO-8601 UTC timestamp, a level, an event and a logger
    for event in events:
        assert {"timestamp", "level", "event", "logger"} <= event.keys(), event
        stamp = datetime.fromisoformat(event["timestamp"])
        assert stamp.utcoffset() == timedelta(0), event
        assert event["level"] in ("debug", "info", "warning", "error", "critical")
        assert event["logger"].startswith("tracemind.")

    # And: task lines (from the worker processes) carry task_id, flow_id and attempt
    task_lines = [e for e in events if e["event"].startswith("task ")]
    assert {e["event"] for e in task_lines} >= {"task started", "task succeeded", "task retrying"}
    assert "task dead-lettered" in {e["event"] for e in task_lines}
    for event in task_lines:
        assert {"task_id", "flow_id", "attempt"} <= event.keys(), event
    assert {(e["task_id"], e["flow_id"]) for e in task_lines} == {
        (ok, "greet"),
        (failing, "failing"),
    }
    assert sorted(
        e["attempt"] for e in task_lines if e["task_id"] == failing and e["event"] == "task started"
    ) == [1, 2]

    # And: the lifecycle is logged in order, by the daemon and its workers
    names = [e["event"] for e in events]
    for name in LIFECYCLE:
        assert name in names, name
    assert [n for n in names if n in LIFECYCLE and n != "worker spawned"] == [
        "daemon started", "drain begin", "drain end", "daemon stopped",
    ]  # fmt: skip
    assert names.count("worker started") == 2 and names.count("worker stopped") == 2
    # And: each worker leases from its own share of the queue first
    started = [e["share"] for e in events if e["event"] == "worker started"]
    assert sorted(started) == [[0, 2], [1, 2]]
    assert names[-1] == "daemon stopped"


@pytest.mark.slow
def test_sighup_reopens_the_log_file(daemon_env: DaemonEnv) -> None:
    # Given: a running daemon whose log was moved away (as logrotate does)
    meta = daemon_env.start_ok("--workers", "1")
    rotated = daemon_env.log_path.with_name("daemon.log.1")
    os.rename(daemon_env.log_path, rotated)

    # When: it gets SIGHUP (after checking the PID is our daemon)
    assert is_same_process(meta)
    os.kill(meta["pid"], signal.SIGHUP)

    # Then: a new daemon.log appears, and new lines (the daemon's and its workers') go there
    wait_until(daemon_env.log_path.exists, 10, "a new daemon.log")
    task_id = daemon_env.enqueue(daemon_env.flow("noop", "tracemind.steps.echo"))
    daemon_env.wait(task_id)
    wait_until(
        lambda: any(e.get("task_id") == task_id for e in daemon_env.log_events()),
        10,
        "the worker's task lines in the new log",
    )
    new = daemon_env.log_events()
    assert "log file reopened" in [e["event"] for e in new]
    assert not any(e.get("task_id") == task_id for e in daemon_env.log_events(rotated))
    assert daemon_env.ps()["running"] is True  # SIGHUP did not stop it
    assert daemon_env.stop().returncode == 0
    assert daemon_env.log_events()[-1]["event"] == "daemon stopped"
