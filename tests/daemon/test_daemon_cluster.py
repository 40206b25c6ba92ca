"""Every daemon and pool that serves a queue registers in the queue itself: two daemons with
different state dirs on one queue see each other in ``ps --json``, and a stop of one leaves the
other serving."""

from __future__ import annotations

import json
import subprocess
import time

import pytest
from daemon_harness import DaemonEnv

from tm_testing import tm_command, wait_until
from tracemind.backend.file.registry import STALE_S, Registry


def _cluster(env: DaemonEnv, state_dir: object) -> list[dict[str, object]]:
    doc = env.ps(state_dir)  # type: ignore[arg-type]
    cluster: list[dict[str, object]] = doc["cluster"]
    return cluster


@pytest.mark.slow
def test_two_daemons_on_one_queue_list_each_other_and_one_stops_alone(
    daemon_env: DaemonEnv,
) -> None:
    # Given two daemons on one queue, each with its own state dir
    other_state = daemon_env.root / "state-b"
    first = daemon_env.start_ok("--workers", "1")
    second = daemon_env.start("--workers", "1", state_dir=other_state)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"also serving this queue: daemon {first['instance_id']}" in second.stdout
    second_meta = daemon_env.read_json("daemon.json", other_state)
    assert second_meta is not None
    ids = {first["instance_id"], second_meta["instance_id"]}

    # Then each one's ps lists both, with their state dirs and workers
    for state in (daemon_env.state_dir, other_state):
        wait_until(lambda s=state: {m["instance_id"] for m in _cluster(daemon_env, s)} == ids,
                   20, "both daemons in the cluster")  # fmt: skip
    [member] = [m for m in _cluster(daemon_env, other_state) if m["instance_id"] in ids and
                m["state_dir"] == str(other_state)]  # fmt: skip
    assert member["kind"] == "daemon" and member["workers"]["configured"] == 1  # type: ignore[index]

    # When the first is stopped
    assert daemon_env.stop().returncode == 0
    # Then the second still serves the queue, alone in the cluster, and runs new tasks
    wait_until(
        lambda: (
            [m["instance_id"] for m in _cluster(daemon_env, other_state)]
            == [second_meta["instance_id"]]
        ),
        20,
        "the stopped daemon to leave the cluster",
    )
    served = daemon_env.tm("enqueue", daemon_env.flow("echo", "tracemind.steps.echo"), "--json")
    assert served.returncode == 0 and "notice" not in served.stderr  # someone serves it
    task_id = json.loads(served.stdout)["task_id"]
    assert daemon_env.wait(task_id)["status"] == "succeeded"
    stop = daemon_env.tm("daemon", "stop", "--state-dir", other_state)
    assert stop.returncode == 0, stop.stderr


@pytest.mark.slow
def test_a_worker_pool_registers_while_it_runs(daemon_env: DaemonEnv) -> None:
    pool = subprocess.Popen(
        [*tm_command(), "workers", "start", "-n", "1"],
        env=daemon_env.env,
        cwd=daemon_env.root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        registry = Registry(
            daemon_env.data_dir / "queue", str(daemon_env.data_dir / "queue" / "tmp")
        )
        [member] = wait_until(registry.live, 20, "the pool's registration")
        assert (member["kind"], member["pid"]) == ("pool", pool.pid)
    finally:
        pool.terminate()
        assert pool.wait(timeout=30) == 0
    assert registry.live() == []  # a clean exit deregisters


def test_a_registration_whose_heartbeat_stopped_is_not_live(tmp_path: object) -> None:
    from pathlib import Path

    root = Path(str(tmp_path)) / "queue"
    (root / "tmp").mkdir(parents=True)
    registry = Registry(root, str(root / "tmp"))
    registry.register({"instance_id": "a1", "started_at": "x"})
    assert [m["instance_id"] for m in registry.live()] == ["a1"]
    assert registry.live(now_s=time.time() + STALE_S + 1) == []
    assert registry.forget_stale(now_s=time.time() + 2 * 86_400) == 1
    assert list((root / "registry").iterdir()) == []
