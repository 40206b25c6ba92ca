"""Cancelling a task a daemon's worker is running: the step sees the request, the flow stops
before its next step, and the task ends cancelled."""

from __future__ import annotations

import json

import pytest
from daemon_harness import HELPERS_MODULE, DaemonEnv

from tm_testing import wait_until


@pytest.mark.slow
def test_a_running_task_stops_before_its_next_step_and_ends_cancelled(
    daemon_env: DaemonEnv,
) -> None:
    # Given a two-step flow whose first step runs until it is asked to stop
    flow = {
        "id": "two",
        "entry": "first",
        "steps": [
            {"id": "first", "kind": "task", "hooks": {"run": f"{HELPERS_MODULE}.wait_for_cancel"}},
            {"id": "second", "kind": "task", "hooks": {"run": f"{HELPERS_MODULE}.second_step"}},
            {"id": "end", "kind": "finish"},
        ],
        "edges": [{"from": "first", "to": "second"}, {"from": "second", "to": "end"}],
    }
    path = daemon_env.root / "two.json"
    path.write_text(json.dumps({"flow": flow}))
    daemon_env.start_ok("--workers", "1")
    task_id = daemon_env.enqueue(path)
    wait_until(lambda: daemon_env.marks("started", task_id), 30, "the first step to start")
    # When it is cancelled while its first step runs
    out = json.loads(daemon_env.tm_ok("task", "cancel", task_id, "--json"))
    assert out["requested"] == [task_id]
    # Then the step saw the request, the second step never ran, and the task is cancelled
    wait = daemon_env.tm("task", "wait", task_id, "--timeout", "30", "--json", timeout_s=60)
    assert wait.returncode == 1, wait.stdout + wait.stderr
    assert daemon_env.show(task_id)["status"] == "cancelled"
    assert daemon_env.marks("saw-cancel", task_id) and not daemon_env.marks("second", task_id)
    assert any(e["event"] == "task cancelled" for e in daemon_env.log_events())
