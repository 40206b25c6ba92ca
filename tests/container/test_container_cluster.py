"""A daemon on the host and the daemon in the container serve one bind-mounted queue: each
lists the other in ``tm daemon ps --json`` ``cluster`` (the registry lives in the queue)."""

from __future__ import annotations

import json
import shutil
import socket
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from conftest import Project

pytestmark = [pytest.mark.container]


def _members(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["instance_id"]: m for m in doc["cluster"]}


@pytest.mark.timeout(120)
def test_a_host_daemon_and_the_container_daemon_list_each_other(stack: Project) -> None:
    container_id = stack.tm_json("daemon", "ps")["instance_id"]
    host_state = Path(tempfile.mkdtemp(prefix="tm-ctest-host-state-"))
    # Given a second daemon, on the host, serving the container's queue from its own state dir
    started = stack.tm("daemon", "start", "--workers", "1", "--state-dir", str(host_state))
    try:
        assert f"also serving this queue: daemon {container_id}" in started.stdout, started.stdout
        host_id = json.loads((host_state / "daemon.json").read_text())["instance_id"]

        # When each side asks who serves the queue
        def both_sides() -> tuple[dict[str, Any], dict[str, Any]] | None:
            host = stack.tm_json("daemon", "ps", "--state-dir", str(host_state))
            code, out = stack.exec("tm", "daemon", "ps", "--json")
            assert code == 0, out
            inside = json.loads(out)
            ids = {container_id, host_id}
            if set(_members(host)) == ids and set(_members(inside)) == ids:
                return host, inside
            return None

        host, inside = stack.wait_for("both daemons in both clusters", both_sides, timeout_s=30)

        # Then both see both, each with where it runs and its workers
        assert (host["instance_id"], inside["instance_id"]) == (host_id, container_id)
        for doc in (host, inside):
            members = _members(doc)
            assert members[host_id]["host"] == socket.gethostname()
            assert members[host_id]["state_dir"] == str(host_state)
            assert members[host_id]["workers"]["configured"] == 1
            assert members[container_id]["host"] == stack.container().attrs["Config"]["Hostname"]
            assert members[container_id]["state_dir"] == "/data/state"
            assert all(m["heartbeat_age_s"] < 10 for m in members.values())
        # And a task enqueued on the host still runs (on either daemon)
        task_id = stack.enqueue("sleep.yaml", {"seconds": 0})
        assert stack.wait_task(task_id)["status"] == "succeeded"
    finally:
        stack.tm("daemon", "stop", "--state-dir", str(host_state), check=False)
        shutil.rmtree(host_state, ignore_errors=True)

    # And once the host daemon stopped, the container's cluster is itself alone
    def alone() -> bool:
        code, out = stack.exec("tm", "daemon", "ps", "--json")
        return code == 0 and list(_members(json.loads(out))) == [container_id]

    stack.wait_for("the host daemon to leave the cluster", alone, timeout_s=30)
