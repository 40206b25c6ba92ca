"""Without crashes each task is executed exactly once, however many workers compete for it."""

from __future__ import annotations

import pytest
from daemon_harness import DaemonEnv

from tm_testing import wait_until

TASKS = 1000


@pytest.mark.slow
def test_two_workers_execute_a_thousand_tasks_exactly_once(daemon_env: DaemonEnv) -> None:
    # Given: a daemon with 2 workers whose runtime records every execution (O_APPEND, per process)
    daemon_env.start_ok("--workers", "2", "--runtime", "tm_daemon_helpers:counting")
    flow = daemon_env.flow("noop", "tracemind.steps.echo")

    # When: 1,000 no-op tasks arrive in one batch
    task_ids = daemon_env.enqueue_many(flow, [{"n": n} for n in range(TASKS)])
    assert len(set(task_ids)) == TASKS

    # Then: the queue drains, and every task was executed exactly once
    def drained() -> bool:
        queue = daemon_env.ps()["queue"]
        return queue["pending"] == queue["inflight"] == queue["delayed"] == 0

    wait_until(drained, 120, "the queue to drain")
    wait_until(lambda: sum(daemon_env.executions().values()) >= TASKS, 10, "the last records")
    executions = daemon_env.executions()
    assert set(executions) == set(task_ids)
    assert [t for t, n in executions.items() if n != 1] == []

    # And: both workers took part, every task succeeded (none dead), and the daemon agrees
    assert len(list(daemon_env.exec_dir.glob("exec-*.log"))) == 2
    doc = daemon_env.ps()
    assert doc["dlq"]["pending"] == 0
    for task_id in (task_ids[0], task_ids[TASKS // 2], task_ids[-1]):
        shown = daemon_env.show(task_id)
        assert shown["status"] == "succeeded" and shown["attempts"] == 1
    wait_until(
        lambda: (
            ((daemon_env.heartbeat() or {}).get("outcomes") or {})
            .get("counts", {})
            .get("succeeded")
            == TASKS
        ),
        10,
        "the heartbeat to count 1,000 successes",
    )
