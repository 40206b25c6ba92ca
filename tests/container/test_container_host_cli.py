"""The host's ``tm`` and the container's daemon share one bind-mounted data directory: the host
enqueues, the container runs, and both sides report the same daemon."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

import pytest

from tm_testing import task_file_bytes
from tracemind.queue.records import parse_task_file

if TYPE_CHECKING:
    from conftest import Project

pytestmark = [pytest.mark.container]

AGREE = ("running", "state", "pid", "started_at", "instance_id", "host", "queue", "dlq")


@pytest.mark.timeout(60)
def test_host_enqueue_is_run_by_the_container_and_shown_on_the_host(stack: Project) -> None:
    # Given the host CLI set up as docs/deployment.md says: TM_DATA_DIR = the bind-mounted dir,
    # PYTHONPATH = the app dir (the flow's hook is user code from app/steps/).
    env = stack.host_env(PYTHONPATH=os.fspath(stack.repo / "app"))

    # When the host enqueues the bundled example flow.
    enqueued = json.loads(
        stack.tm(
            "enqueue",
            os.fspath(stack.repo / "app" / "flows" / "hello.yaml"),
            "-i",
            '{"name": "host"}',
            "--json",
            env=env,
        ).stdout
    )
    task_id = enqueued["task_id"]
    assert (stack.data_dir / "queue").is_dir()

    # Then the container runs it, and `tm task show --json` on the host says it succeeded.
    waited = stack.tm("task", "wait", task_id, "--timeout", "30", env=env, check=False)
    assert waited.returncode == 0, waited.stdout + waited.stderr
    shown = json.loads(stack.tm("task", "show", task_id, "--json", env=env).stdout)
    assert shown["status"] == "succeeded" and shown["attempts"] == 1
    assert shown["result"]["greeting"] == "Hello, host!"
    # It ran in the container (the step reports its hostname: the container's), not here.
    assert shown["result"]["greeted_by"] == stack.container().attrs["Config"]["Hostname"]
    # And the container acknowledged it through the mount, in the file the host created: the
    # file kept the shared group (setgid directory) and group write, which let the container's
    # user append the completion line to it.
    [done] = (stack.data_dir / "queue" / "done").glob(f"*/{task_id}.json")
    info = done.stat()
    assert (info.st_gid, info.st_mode & 0o060) == (stack.gid, 0o060)
    record, completion = parse_task_file(task_file_bytes(done))
    assert record["input"] == {"name": "host"}
    assert completion is not None and completion["result"]["greeting"] == "Hello, host!"


@pytest.mark.timeout(90)
def test_daemon_ps_inside_and_on_the_host_agree(stack: Project) -> None:
    # Given a queue with something in every state: tasks running and waiting, one delayed for
    # its retry, one dead.
    dead = stack.enqueue("fail.yaml", {"message": "to the DLQ"})
    assert stack.wait_task(dead)["status"] == "dead"
    delayed = stack.enqueue("fail_later.yaml", {"message": "retry in ten minutes"})
    stack.wait_for(
        "a task delayed for its retry",
        lambda: stack.tm_json("task", "show", delayed)["status"] == "delayed",
        timeout_s=20,
    )
    sleepers = [stack.enqueue("sleep.yaml", {"seconds": 5}) for _ in range(4)]

    def both() -> tuple[dict[str, Any], dict[str, Any]] | None:
        before = stack.tm_json("daemon", "ps")
        code, out = stack.exec("tm", "daemon", "ps", "--json")
        assert code == 0, out
        inside = json.loads(out)
        after = stack.tm_json("daemon", "ps")
        # Counts move as workers finish: take a reading where the host saw the same before/after.
        queue = before["queue"]
        if _pick(before) != _pick(after) or queue["inflight"] < 1 or queue["pending"] < 1:
            return None
        return before, inside

    # When `tm daemon ps --json` runs inside (docker compose exec) and on the host.
    host, inside = stack.wait_for("a stable reading of both sides", both, timeout_s=30)
    via_compose = json.loads(
        stack.compose("exec", "-T", "tracemind", "tm", "daemon", "ps", "--json").stdout
    )

    # Then they agree on running, pid (as the daemon recorded it), started_at, instance id and
    # the queue counts — and the counts are not trivially zero.
    assert _pick(host) == _pick(inside), (host, inside)
    assert host["running"] is True and host["state"] == "running"
    assert host["queue"]["inflight"] >= 1 and host["queue"]["pending"] >= 1
    assert host["queue"]["delayed"] >= 1 and host["dlq"]["pending"] >= 1
    for key in ("running", "pid", "started_at", "instance_id"):
        assert via_compose[key] == host[key], key
    # Each side names its own view of the state dir.
    assert inside["state_dir"] == "/data/state"
    assert host["state_dir"] == os.fspath(stack.data_dir / "state")

    # And the pid is the daemon's as recorded inside the container (meaningless on the host).
    recorded = int((stack.data_dir / "state" / "daemon.pid").read_text())
    assert host["pid"] == recorded
    code, cmdline = stack.exec("cat", f"/proc/{recorded}/cmdline")
    assert code == 0 and "daemon\0start" in cmdline, cmdline

    for task_id in sleepers:
        assert stack.wait_task(task_id, timeout_s=30)["status"] == "succeeded"


def _pick(doc: dict[str, Any]) -> dict[str, Any]:
    picked = {key: doc[key] for key in AGREE}
    picked["queue"] = {k: v for k, v in doc["queue"].items() if k != "oldest_pending_age_s"}
    return picked


@pytest.mark.timeout(60)
def test_tm_health_inside_and_on_the_host(stack: Project) -> None:
    # Inside the container (what the HEALTHCHECK runs): the recorded URL, readiness by default.
    code, out = stack.exec("tm", "health")
    assert code == 0 and "/readyz: 200" in out, out
    code, out = stack.exec("tm", "health", "--probe", "live")
    assert code == 0 and "/livez: 200" in out, out

    # On the host the recorded URL (the container's own 127.0.0.1:8080) means nothing: without
    # --url it refuses (exit 1, naming the way out) instead of probing whatever listens on 8080.
    refused = stack.tm("health", check=False)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "TM_STATUS_URL" in refused.stderr and "--url" in refused.stderr, refused.stderr
    # With the published port it answers.
    url = f"http://127.0.0.1:{stack.port}"
    assert "200" in stack.tm("health", "--url", url).stdout
    assert stack.tm("health", env=stack.host_env(TM_STATUS_URL=url), check=False).returncode == 0
