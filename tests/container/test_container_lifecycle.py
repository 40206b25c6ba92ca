"""Stopping and killing the container: a host `tm daemon stop` and `docker compose stop` drain
and exit 0 (and the container stays down under compose's `restart: on-failure`); a SIGKILLed
container loses none of 500 tasks in flight once it is started again."""

from __future__ import annotations

import json
import random
import subprocess
import time
from typing import TYPE_CHECKING, Any

import pytest

from tracemind.backend.file.stores import open_stores
from tracemind.config import DataDirs
from tracemind.queue.names import InflightName
from tracemind.queue.protocol import TaskStatus

if TYPE_CHECKING:
    from conftest import Project

pytestmark = [pytest.mark.container]

DOCUMENTED_RESTART_POLICY = "on-failure"  # compose.yaml and docs/deployment.md
STAYS_DOWN_CHECK_S = 4.0  # Docker's first restart back-off is 0.1 s; a restart would show by then
KILL_TASKS = 500


def _events(project: Project, since: float) -> list[dict[str, Any]]:
    lines = project.logs(stdout=True, since=since)
    return [json.loads(line) for line in lines if line.startswith("{")]


def _assert_stays_down(project: Project, restarts_before: int) -> None:
    time.sleep(STAYS_DOWN_CHECK_S)
    state = project.state()
    assert state["Status"] == "exited", state
    assert project.container().attrs["RestartCount"] == restarts_before


def _wait_inflight(project: Project, task_id: str) -> None:
    project.wait_for(
        f"task {task_id} to be running",
        lambda: project.tm_json("task", "show", task_id)["status"] == "inflight",
        timeout_s=20,
    )


@pytest.mark.timeout(120)
def test_host_daemon_stop_drains_and_the_container_stays_down(stack: Project) -> None:
    container = stack.container()
    assert container.attrs["HostConfig"]["RestartPolicy"]["Name"] == DOCUMENTED_RESTART_POLICY
    docs = (stack.repo / "docs" / "deployment.md").read_text(encoding="utf-8")
    assert f"`restart: {DOCUMENTED_RESTART_POLICY}`" in docs
    restarts = container.attrs["RestartCount"]
    # Given a task running in the container.
    task_id = stack.enqueue("sleep.yaml", {"seconds": 2})
    _wait_inflight(stack, task_id)

    # When the host asks the container's daemon to stop (through the shared state dir).
    since = time.time()
    started = time.monotonic()
    stopped = stack.tm("daemon", "stop", "--timeout", "25")
    took_s = time.monotonic() - started

    # Then it drained: the running task finished, and the command returned once it had.
    assert stopped.stdout.startswith("daemon stopped"), stopped.stdout
    assert stack.tm_json("task", "show", task_id)["status"] == "succeeded"
    assert took_s < 25
    # And the container exited 0 and stays down under the restart policy.
    state = stack.wait_exited(timeout_s=20)
    assert state["ExitCode"] == 0 and not state["OOMKilled"], state
    _assert_stays_down(stack, restarts)
    ps = stack.tm("daemon", "ps", "--json", check=False)
    assert ps.returncode == 3, ps.stdout + ps.stderr  # LSB status: not running
    doc = json.loads(ps.stdout)
    assert doc["running"] is False and doc["state"] == "stopped" and doc["status_url"] is None
    events = _events(stack, since)
    assert any(e["event"] == "stop requested" for e in events)
    assert any(e["event"] == "daemon stopped" and e.get("drained") is True for e in events)

    # And `docker compose up -d --wait` brings it back.
    stack.up()
    assert stack.get("/readyz").status == 200


@pytest.mark.timeout(120)
def test_compose_stop_drains_and_exits_0_within_the_grace_period(stack: Project) -> None:
    container = stack.container()
    grace_s = container.attrs["Config"]["StopTimeout"]
    assert grace_s and grace_s > 8, "stop_grace_period must exceed the 8 s drain timeout"
    restarts = container.attrs["RestartCount"]
    # Given a task that needs about 4 more seconds.
    task_id = stack.enqueue("sleep.yaml", {"seconds": 4})
    _wait_inflight(stack, task_id)

    # When `docker compose stop` sends SIGTERM.
    since = time.time()
    started = time.monotonic()
    stop = subprocess.Popen(
        stack.compose_argv("stop", "tracemind"),
        cwd=stack.repo,
        env=stack.compose_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    readiness: list[tuple[int, str]] = []
    try:
        # While it drains, /readyz says 503 "draining" (and /livez stays 200).
        while stop.poll() is None and time.monotonic() - started < grace_s + 10:
            try:
                ready, live = stack.get("/readyz"), stack.get("/livez")
            except OSError:
                pass  # the status server has gone (the last moments of the drain)
            else:
                readiness.append((ready.status, ready.body))
                if ready.status == 503:
                    assert live.status == 200, live.body
            time.sleep(0.2)
        output, _ = stop.communicate(timeout=grace_s + 10)
    finally:
        if stop.poll() is None:
            stop.kill()
            stop.wait()
    took_s = time.monotonic() - started

    # Then it waited for the task (the drain), but not for the grace period to run out.
    assert stop.returncode == 0, output
    assert took_s < grace_s, f"stop took {took_s:.1f} s: the engine had to SIGKILL"
    assert took_s > 1.5, f"stop took {took_s:.1f} s: it did not wait for the running task"
    drained_503 = [body for status, body in readiness if status == 503]
    assert drained_503 and json.loads(drained_503[0]) == {"ready": False, "reason": "draining"}
    state = stack.wait_exited(timeout_s=5)
    assert state["ExitCode"] == 0 and not state["OOMKilled"], state
    shown = stack.tm_json("task", "show", task_id)
    assert shown["status"] == "succeeded" and shown["attempts"] == 1, shown
    events = _events(stack, since)
    assert any(e["event"] == "drain end" and e.get("drained") is True for e in events)
    assert events[-1]["event"] == "daemon stopped", events[-1]
    _assert_stays_down(stack, restarts)

    stack.up()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_sigkill_mid_run_loses_none_of_500_tasks(stack: Project) -> None:
    # Given 500 short tasks enqueued from the host in one batch.
    rng = random.Random(5)
    inputs = stack.data_dir.parent / f"{stack.name}-inputs.jsonl"
    inputs.write_text(
        "".join(
            json.dumps({"seconds": round(rng.uniform(0.05, 0.1), 3), "n": n}) + "\n"
            for n in range(KILL_TASKS)
        ),
        encoding="utf-8",
    )
    batch = stack.tm_json("enqueue", str(stack.flows / "sleep.yaml"), "--inputs", str(inputs))
    task_ids = batch["task_ids"]
    assert len(set(task_ids)) == KILL_TASKS and batch["duplicates"] == 0
    done_dir = stack.data_dir / "queue" / "done"
    inflight_dir = stack.data_dir / "queue" / "inflight"

    def done_count() -> int:
        return sum(1 for task_id in task_ids if any(done_dir.glob(f"*/{task_id}.json")))

    before_kill = stack.tm_json("daemon", "ps")
    dead_before = before_kill["dlq"]["pending"]
    since = time.time()
    container = stack.container()
    restarts = container.attrs["RestartCount"]

    # When the container is SIGKILLed while workers hold leases, part-way through.
    stack.wait_for(
        "some tasks to be done", lambda: done_count() >= 40, timeout_s=60, interval_s=0.1
    )
    stack.wait_for(
        "a lease to be held", lambda: any(inflight_dir.iterdir()), timeout_s=10, interval_s=0.01
    )
    container.kill()  # SIGKILL: no drain, no lease returned
    state = stack.wait_exited(timeout_s=20)
    assert state["ExitCode"] == 137, state
    finished_before_restart = done_count()
    stale = [n for n in map(InflightName.parse, (p.name for p in inflight_dir.iterdir())) if n]
    assert finished_before_restart < KILL_TASKS - 100, "the kill came too late to mean anything"

    # Then the host sees the daemon gone (its lock died with it), and `docker kill` is a manual
    # stop: the container stays down under the restart policy.
    ps = stack.tm("daemon", "ps", "--json", check=False)
    assert ps.returncode == 3, ps.stdout + ps.stderr  # LSB status: not running
    assert json.loads(ps.stdout)["state"] == "stopped", ps.stdout
    _assert_stays_down(stack, restarts)

    # When it is started again.
    stack.up()

    # Then every one of the 500 tasks completes, none lost and none dead.
    stack.wait_for(
        "the queue to drain", lambda: stack.queue_busy() == 0, timeout_s=150, interval_s=1
    )
    stores = open_stores(
        DataDirs(stack.data_dir / "queue", stack.data_dir / "idempotency", stack.data_dir / "dlq"),
        durable=False,
    )
    statuses: dict[str, int] = {}
    for task_id in task_ids:
        info = stores.queue.find(task_id)
        status = info.status.value if info is not None else "lost"
        statuses[status] = statuses.get(status, 0) + 1
    assert statuses == {TaskStatus.SUCCEEDED.value: KILL_TASKS}, statuses
    assert stack.tm_json("queue", "stats")["dead"] == dead_before  # none of ours died
    # The tasks whose leases the kill orphaned, checked one by one through the host CLI.
    for name in stale:
        assert stack.tm_json("task", "show", name.task_id)["status"] == "succeeded"

    # And the new daemon (another instance) returned the dead one's leases at once.
    after = stack.tm_json("daemon", "ps")
    assert after["running"] is True and after["instance_id"] != before_kill["instance_id"]
    if stale:
        returned = [
            e for e in _events(stack, since) if e["event"] == "returned leases of a dead daemon"
        ]
        assert returned and returned[-1]["previous_instance"] == before_kill["instance_id"]
        assert returned[-1]["leases"] == len(stale)


@pytest.mark.timeout(120)
def test_a_crashed_daemon_is_restarted_by_the_policy(stack: Project) -> None:
    # Given the running daemon's pid inside the container (as it recorded it).
    before = stack.tm_json("daemon", "ps")
    container = stack.container()
    restarts = container.attrs["RestartCount"]

    # When the daemon process dies without a drain (what the OOM killer does).
    code, out = stack.exec("sh", "-c", f"kill -KILL {int(before['pid'])}")
    assert code == 0, out

    # Then tini exits with it, and `restart: on-failure` brings the container back: a new
    # daemon instance, healthy again, without anyone running `up`.
    stack.wait_for(
        "the restart policy to restart the container",
        lambda: stack.container().attrs["RestartCount"] > restarts,
        timeout_s=30,
    )
    stack.wait_for("the restarted container to be healthy", stack.is_healthy, timeout_s=60)
    after = stack.tm_json("daemon", "ps")
    assert after["running"] is True and after["instance_id"] != before["instance_id"]
    assert stack.get("/readyz").status == 200
