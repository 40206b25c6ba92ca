"""The Python client and the task verbs against a real daemon: tasks that really run, in worker
processes, and callers that wait on several of them."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from daemon_harness import DaemonEnv

from tracemind import Client, TaskStatus, WaitTimeout

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "python-api.md"


@pytest.fixture
def client(daemon_env: DaemonEnv) -> Client:
    env = {**daemon_env.env, "XDG_CACHE_HOME": str(daemon_env.root / "cache")}
    return Client(daemon_env.data_dir, env=env)


def test_client_enqueues_and_waits_on_several_tasks(daemon_env: DaemonEnv, client: Client) -> None:
    # Given a running daemon
    daemon_env.start_ok("--workers", "2")
    greet = daemon_env.flow("greet", "tracemind.steps.greet")
    fail = daemon_env.flow("fail", "tracemind.steps.fail", retry={"max_attempts": 1})

    # When the client enqueues a batch, a one-step task, a delayed task and one that fails
    batch = client.enqueue_many(greet, [{"name": "Ada"}, {"name": "Grace"}])
    step = client.enqueue_step("tracemind.steps.greet", {"name": "step"})
    started = time.time()
    delayed = client.enqueue(greet, {"name": "later"}, delay_s=1.5)
    dead = client.enqueue(fail, {"message": "no"})
    infos = client.wait([*batch, step, delayed, dead], timeout_s=30)

    # Then wait returns them all finished, in the order given, with results and errors
    assert [i.task_id for i in infos] == [*batch, step, delayed, dead]
    assert [i.status for i in infos] == [TaskStatus.SUCCEEDED] * 4 + [TaskStatus.DEAD]
    assert [i.result["greeting"] for i in infos[:4]] == [  # type: ignore[index]
        "Hello, Ada!",
        "Hello, Grace!",
        "Hello, step!",
        "Hello, later!",
    ]
    assert infos[3].finished_s is not None and infos[3].finished_s >= started + 1.4
    assert infos[4].error is not None and "no" in infos[4].error
    assert client.stats().dead == 1


def test_task_wait_on_several_ids_exit_codes(daemon_env: DaemonEnv) -> None:
    daemon_env.start_ok("--workers", "2", "--drain-timeout", "1")
    greet = daemon_env.flow("greet", "tracemind.steps.greet")
    fail = daemon_env.flow("fail", "tracemind.steps.fail", retry={"max_attempts": 1})
    a, b = daemon_env.enqueue(greet), daemon_env.enqueue(greet)
    dead = daemon_env.enqueue(fail)
    slow = daemon_env.enqueue(daemon_env.flow("slow", "tracemind.steps.sleep"), {"seconds": 30})

    ok = daemon_env.tm("task", "wait", a, b, "--timeout", "30", "--json")
    assert ok.returncode == 0, ok.stderr
    assert [t["status"] for t in json.loads(ok.stdout)] == ["succeeded", "succeeded"]

    with_dead = daemon_env.tm("task", "wait", a, dead, "--timeout", "30")
    assert with_dead.returncode == 1, with_dead.stderr
    assert re.findall(r"^status\s+(\w+)", with_dead.stdout, re.M) == ["succeeded", "dead"]

    timed_out = daemon_env.tm("task", "wait", a, slow, "--timeout", "0.5", "--json")
    assert timed_out.returncode == 3
    assert [t["status"] for t in json.loads(timed_out.stdout)] == ["succeeded", "inflight"]


def test_enqueue_delay_and_at_from_the_cli(daemon_env: DaemonEnv) -> None:
    daemon_env.start_ok("--workers", "1")
    greet = daemon_env.flow("greet", "tracemind.steps.greet")

    soon = json.loads(daemon_env.tm_ok("enqueue", greet, "--delay", "1s", "--json"))["task_id"]
    far = json.loads(
        daemon_env.tm_ok("enqueue", greet, "--at", "2099-01-01T00:00:00+01:00", "--json")
    )["task_id"]

    far_view = daemon_env.show(far)
    assert far_view["status"] == "delayed"
    assert far_view["due_at"] == "2098-12-31T23:00:00.000Z"
    assert daemon_env.show(soon)["status"] in ("delayed", "pending", "inflight", "succeeded")
    assert daemon_env.wait(soon, timeout_s=20)["status"] == "succeeded"
    assert daemon_env.show(far)["status"] == "delayed"


def test_the_documented_example_runs(daemon_env: DaemonEnv) -> None:
    # Given the daemon serving TM_DATA_DIR, and the example of docs/python-api.md
    daemon_env.start_ok("--workers", "2")
    [example] = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)[:1]

    # When it runs as a program from the repository root
    proc = subprocess.run(
        [sys.executable, "-c", example],
        cwd=REPO,
        env={**daemon_env.env, "XDG_CACHE_HOME": str(daemon_env.root / "cache")},
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )

    # Then it printed each greeting and its tasks succeeded
    assert proc.returncode == 0, proc.stderr
    assert "Hello, Ada!" in proc.stdout and "Hello, Grace!" in proc.stdout
    assert "Hello, later!" in proc.stdout


def test_wait_times_out_while_the_task_runs(daemon_env: DaemonEnv, client: Client) -> None:
    daemon_env.start_ok("--workers", "1", "--drain-timeout", "1")
    task_id = client.enqueue_step("tracemind.steps.sleep", {"seconds": 30})

    with pytest.raises(WaitTimeout) as raised:
        client.wait([task_id], timeout_s=0.5)

    assert raised.value.unfinished == [task_id]
