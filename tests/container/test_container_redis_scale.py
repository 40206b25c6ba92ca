"""The ``scale`` profile: ``compose.yaml`` + ``deploy/compose.scale.yaml`` run three daemon
containers on one Redis (built here from ``deploy/redis/Dockerfile`` on the local base image:
nothing can be pulled). The host's ``tm`` reaches the queue through Redis's port published on
127.0.0.1: it lists the three daemons, enqueues 300 tasks that all succeed while one replica is
``docker kill``ed mid-run, and agrees with the ``tm`` inside a container on every read verb.

The project (its own name, Redis port and image tag) is taken down with ``down -v`` and the
image tag removed at the end, whatever happened."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from conftest import Project

pytestmark = [pytest.mark.container]

TASKS = 300
REPLICAS = 3
WORKERS_PER_REPLICA = 2
"""The daemon's default ``--workers`` (the image passes none)."""
BUILD_TIMEOUT_S = 600
COMPOSE_TIMEOUT_S = 240
STALE_S = 10.0


@pytest.fixture(scope="module")
def redis_image(docker_client: Any) -> Iterator[str]:
    """deploy/redis/Dockerfile built on the local base image (``TM_BASE_IMAGE``) under a tag of
    this run; the tag is removed afterwards."""
    base = os.environ.get("TM_BASE_IMAGE")
    if not base:
        pytest.skip('TM_BASE_IMAGE is not set (eval "$(scripts/ci/docker-engine.sh --print-env)")')
    tag = f"tracemind-redis:test-{os.getpid()}"
    repo = Path(__file__).resolve().parents[2]
    built = subprocess.run(
        ["docker", "build", "--network", os.environ.get("TM_BUILD_NETWORK") or "host",
         "--build-arg", f"BASE_IMAGE={base}", "-t", tag, str(repo / "deploy" / "redis")],
        capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    try:
        yield tag
    finally:
        with contextlib.suppress(Exception):
            docker_client.images.remove(tag)


class Scale:
    """One compose project of compose.yaml + deploy/compose.scale.yaml, profile ``scale``."""

    def __init__(self, project: Project, redis_image: str, redis_port: int) -> None:
        self.project = project
        self.redis_port = redis_port
        self.env = {
            **project.compose_env(),
            "TM_REDIS_IMAGE": redis_image,
            "TM_REDIS_PORT": str(redis_port),
            "COMPOSE_PROJECT_NAME": project.name,
        }
        self.url = f"redis://127.0.0.1:{redis_port}/0"

    def compose(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        repo = self.project.repo
        argv = ["docker", "compose", "-f", str(repo / "compose.yaml")]
        argv += ["-f", str(repo / "deploy" / "compose.scale.yaml"), "-p", self.project.name]
        argv += ["--profile", "scale", *args]
        proc = subprocess.run(
            argv, cwd=repo, env=self.env, capture_output=True, text=True,
            timeout=COMPOSE_TIMEOUT_S, check=False,
        )  # fmt: skip
        if check:
            assert proc.returncode == 0, (
                f"compose {args}: {proc.stdout[-3000:]}{proc.stderr[-3000:]}"
            )
        return proc

    def host_tm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """The host's ``tm`` on the published Redis port."""
        env = self.project.host_env(TM_QUEUE_URL=self.url)
        env.pop("TM_DATA_DIR")
        return self.project.tm(*args, env=env, check=check)

    def host_json(self, *args: str) -> Any:
        return json.loads(self.host_tm(*args, "--json").stdout)

    def inside_json(self, container_id: str, *args: str) -> Any:
        """``tm ARGS --json`` in a replica (on its own TM_QUEUE_URL: redis://redis:6379)."""
        container = self.project.client.containers.get(container_id)
        code, output = container.exec_run(["tm", *args, "--json"], demux=True)
        stdout, stderr = output
        assert code == 0, (stdout or b"") + (stderr or b"")
        return json.loads(stdout)

    def container_ids(self) -> list[str]:
        return self.compose("ps", "-q", "tracemind").stdout.split()

    def members(self) -> set[str]:
        doc = json.loads(self.host_tm("daemon", "ps", "--json", check=False).stdout)
        return {m["instance_id"] for m in doc["cluster"] if m["kind"] == "daemon"}


@pytest.fixture
def scale(make_project: Callable[..., Project], redis_image: str) -> Iterator[Scale]:
    # (any user: the daemons keep nothing on the host)
    ids = (23001, 23000) if os.geteuid() == 0 else (os.getuid(), os.getgid())
    project = make_project("tmscale", uid=ids[0], gid=ids[1])
    stack = Scale(project, redis_image, _free_port())
    try:
        stack.compose("up", "-d", "--no-build", "--scale", f"tracemind={REPLICAS}", "--wait")
        yield stack
    finally:
        stack.compose("down", "-v", "--remove-orphans", "-t", "20", check=False)


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.timeout(600)
def test_three_replicas_on_one_redis_survive_a_docker_kill_and_agree_with_the_host(
    scale: Scale, flows_dir: Path
) -> None:
    wait_for = scale.project.wait_for
    # Given three daemon containers on one Redis: the host's tm lists all three
    wait_for("three daemons in the cluster", lambda: len(scale.members()) == REPLICAS, 60)
    members = scale.members()
    # When 300 tasks (and one that fails) are enqueued from the host
    batch = flows_dir.parent / f"{scale.project.name}-batch.jsonl"
    batch.write_text("".join(json.dumps({"seconds": 0.1, "n": n}) + "\n" for n in range(TASKS)))
    task_ids = scale.host_json("enqueue", str(flows_dir / "sleep.yaml"), "--inputs", str(batch))[
        "task_ids"
    ]
    failing = scale.host_json("enqueue", str(flows_dir / "fail.yaml"), "-i", "{}")["task_id"]
    # ... and one replica is docker-killed mid-run
    wait_for("a tenth of the tasks done",
             lambda: len(scale.host_json("task", "ls", "--status", "succeeded", "--limit", "400"))
             >= TASKS // 10, 120)  # fmt: skip
    victim = scale.container_ids()[1]
    subprocess.run(["docker", "kill", victim], capture_output=True, timeout=60, check=True)
    killed_s = time.monotonic()

    # Then every task succeeds
    done = scale.host_tm("task", "wait", *task_ids, "--timeout", "180", "--json", check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    shown = json.loads(done.stdout)
    assert [doc["task_id"] for doc in shown] == task_ids
    assert {doc["status"] for doc in shown} == {"succeeded"}
    rerun = [doc["task_id"] for doc in shown if doc["attempts"] > 1]
    print(json.dumps({"ran_again": rerun}))
    # ... (only what the killed replica's workers held ran again: at most one per worker)
    assert len(rerun) <= WORKERS_PER_REPLICA, rerun
    # ... and the killed replica leaves the cluster after the stale limit
    wait_for("the killed replica to leave the cluster",
             lambda: len(scale.members()) == REPLICAS - 1, STALE_S + 30)  # fmt: skip
    assert scale.members() < members and time.monotonic() - killed_s >= 1.0

    # Then the host's tm and a container's tm agree on stats, task show and dlq ls
    wait_for("the failing task dead", lambda: scale.host_json("queue", "stats")["dead"] == 1, 60)
    survivor = next(cid for cid in scale.container_ids() if not victim.startswith(cid))
    assert scale.host_json("queue", "stats") == scale.inside_json(survivor, "queue", "stats")
    for task_id in (task_ids[0], task_ids[-1], failing):
        assert scale.host_json("task", "show", task_id) == scale.inside_json(
            survivor, "task", "show", task_id
        )
    host_dlq = scale.host_json("dlq", "ls")
    assert [entry["task_id"] for entry in host_dlq] == [failing]
    assert host_dlq == scale.inside_json(survivor, "dlq", "ls")
