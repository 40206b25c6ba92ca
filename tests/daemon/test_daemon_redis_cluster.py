"""Three daemons (processes, each with its own state dir) on one Redis queue: they list each
other in ``ps --json`` ``cluster``; one SIGKILLed (with its workers) while they drain 2,000
tasks loses nothing: what it held runs again (``attempts`` 2) after its lease time, nothing else
runs twice, and its registration goes after the stale limit; ``tm daemon stop`` of another
leaves the third serving. Executions are counted by the counting runtime's append-only logs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import DaemonEnv

from tm_testing import wait_until
from tracemind.backend import open_backend
from tracemind.backend.redis.stores import STALE_S

TASKS = 2000
KILLED_LEASE_S = 3.0
"""The killed daemon's lease: its tasks come back soon after it dies."""
SURVIVOR_LEASE_S = 60.0
"""The others': a pause of theirs on a busy machine must never let a lease lapse."""


def _members(env: DaemonEnv, state_dir: Path) -> set[str]:
    return {str(m["instance_id"]) for m in env.ps(state_dir)["cluster"]}


def _held_by(location: str, consumer_prefix: str) -> set[str]:
    """Ids of the tasks that consumers named ``consumer_prefix…`` hold now (read from Redis)."""
    backend: Any = open_backend(location, durable=True, env={})
    client, keys = backend.connection.client, backend.connection.keys
    held = client.zrange(keys.leases, 0, -1)
    return {
        t for t in held if str(client.hget(keys.task(t), "consumer")).startswith(consumer_prefix)
    }


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_three_daemons_drain_2000_tasks_while_one_is_sigkilled(
    daemon_env: DaemonEnv, redis_location: str
) -> None:
    # Given three daemons on one Redis queue, two workers each
    env = daemon_env
    env.env.pop("TM_DATA_DIR")
    env.env["TM_QUEUE_URL"] = redis_location
    states = {name: env.root / f"state-{name}" for name in "abc"}
    metas: dict[str, dict[str, Any]] = {}
    for name, state in states.items():
        lease_s = KILLED_LEASE_S if name == "b" else SURVIVOR_LEASE_S
        proc = env.start("--workers", "2", "--runtime", "tm_daemon_helpers:counting",
                         "--lease-s", str(lease_s), state_dir=state)  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        meta = env.read_json("daemon.json", state)
        assert meta is not None
        metas[name] = meta
    ids = {meta["instance_id"] for meta in metas.values()}
    # Then each one's ps lists all three in the cluster
    for state in states.values():
        wait_until(lambda s=state: _members(env, s) == ids, 30, "three daemons in the cluster")

    # When 2,000 tasks of 30 ms are enqueued (one batch) and one daemon is SIGKILLed mid-run
    # (busy: each worker holds a lease most of the time)
    flow = env.flow("sleep", "sleep")
    task_ids = env.enqueue_many(flow, [{"seconds": 0.03} for _ in range(TASKS)])
    wait_until(lambda: sum(env.executions().values()) >= TASKS // 4, 60, "a quarter done")
    killed = metas["b"]
    env.kill_daemon(killed, group=True)
    held = _held_by(redis_location, f"{killed['instance_id']}-")  # (before its leases lapse)
    # ... (its registration outlives it until the stale limit)
    assert killed["instance_id"] in _members(env, states["a"])

    # Then every task ends succeeded
    done = env.tm("task", "wait", *task_ids, "--timeout", "90", "--json", timeout_s=150)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr
    # ... the killed daemon's registration is gone after the stale limit, from every view
    for name in "ac":
        wait_until(
            lambda s=states[name]: killed["instance_id"] not in _members(env, s),
            STALE_S + 20,
            "the killed daemon to leave the cluster",
        )
    # ... what it held ran again (attempt 2), and nothing else ran twice
    counts = env.executions()
    assert set(counts) == set(task_ids)
    twice = {task_id for task_id, n in counts.items() if n > 1}
    assert held, "the killed daemon held no lease: the kill came between tasks"
    assert twice <= held and max(counts.values()) <= 2, (twice - held, counts.most_common(3))
    for task_id in held:
        shown = env.show(task_id)
        assert shown["status"] == "succeeded" and shown["attempts"] >= 2, shown
    print(json.dumps({"held_by_killed": sorted(held), "ran_twice": sorted(twice)}))

    # When one survivor is stopped
    stop = env.tm("daemon", "stop", "--state-dir", states["a"])
    assert stop.returncode == 0, stop.stdout + stop.stderr
    # Then the third serves the queue alone
    survivor = metas["c"]["instance_id"]
    wait_until(lambda: _members(env, states["c"]) == {survivor}, 30, "the third alone")
    [late] = env.enqueue_many(flow, [{"seconds": 0}])
    assert env.wait(late)["status"] == "succeeded"
    assert env.ps(states["c"])["running"] is True
