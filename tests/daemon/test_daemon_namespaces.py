"""Liveness and stop across PID namespaces: the lock and the heartbeat decide, never a PID alone.

A daemon in another PID namespace (a container) records a PID that means something else here;
a stale daemon.json may name a live, unrelated process. Neither may fool ``ps``, ``stop`` or
``start``.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from daemon_harness import DaemonEnv, daemon_pids, pids_mentioning, process_alive

from tm_testing import tm_command, wait_until
from tracemind.daemon.identity import describe_self, start_ticks

UNSHARE = ("unshare", "--pid", "--fork", "--mount-proc")


def ns_pids(host_pid: int) -> list[int]:
    """The PIDs of a process in each PID namespace it is in, outermost first (NSpid)."""
    for line in Path(f"/proc/{host_pid}/status").read_text().splitlines():
        if line.startswith("NSpid:"):
            return [int(p) for p in line.split()[1:]]
    return [host_pid]


@pytest.mark.slow
def test_ps_and_stop_a_daemon_in_another_pid_namespace(
    daemon_env: DaemonEnv, pid_namespaces: bool
) -> None:
    if not pid_namespaces:
        pytest.skip("needs root and `unshare --pid --fork --mount-proc` (Linux)")
    # Given: a daemon in its own PID namespace (a shell is PID 1 there, so the daemon is not)
    # sharing the state dir with us
    shell = ["sh", "-c", '"$@"; exit $?', "sh"]
    outer = daemon_env.start_foreground("--workers", "2", prefix=[*UNSHARE, *shell])
    wait_until(lambda: daemon_env.ps()["running"], 30, "the namespaced daemon's heartbeat")
    meta = daemon_env.meta()
    assert meta is not None
    [host_pid] = daemon_pids(daemon_env.state_dir)
    recorded = meta["pid"]
    assert ns_pids(host_pid)[-1] == recorded != host_pid  # it recorded its namespace's PID
    assert (daemon_env.state_dir / "daemon.pid").read_text().strip() == str(recorded)

    # When: the host asks ps
    doc = daemon_env.ps()

    # Then: running, with the PID as the daemon recorded it, its workers alive and idle
    assert doc["running"] is True and doc["state"] == "running"
    assert doc["pid"] == recorded
    assert doc["instance_id"] == meta["instance_id"]
    assert doc["heartbeat_age_s"] < 5
    assert doc["workers"]["configured"] == 2

    # And: a task enqueued from the host runs there
    task_id = daemon_env.enqueue(daemon_env.flow("noop", "tracemind.steps.echo"), {"x": 1})
    assert daemon_env.wait(task_id)["result"] == {"x": 1}

    # When: the host stops it
    proc = daemon_env.stop()

    # Then: it stopped through the stop request (acknowledged), not by a signal to a host PID
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"daemon stopped (pid {recorded})" in proc.stdout
    assert outer.wait(timeout=20) == 0
    ack = daemon_env.read_json("stop.ack")
    assert ack is not None and ack["instance_id"] == meta["instance_id"]
    events = daemon_env.log_events()
    requested = [e for e in events if e["event"] == "stop requested"]
    assert requested and "tm daemon stop" in requested[0]["by"]
    assert not any(e["event"] == "drain requested" for e in events)  # no SIGTERM arrived
    assert events[-1]["event"] == "daemon stopped"
    assert not pids_mentioning(str(daemon_env.state_dir))
    assert daemon_env.ps()["running"] is False


@pytest.mark.slow
def test_ps_from_another_pid_namespace_sees_a_host_daemon(
    daemon_env: DaemonEnv, pid_namespaces: bool
) -> None:
    if not pid_namespaces:
        pytest.skip("needs root and `unshare --pid --fork --mount-proc` (Linux)")
    meta = daemon_env.start_ok("--workers", "1")

    inside = subprocess.run(
        [
            *UNSHARE,
            *tm_command(),
            "daemon",
            "ps",
            "--json",
            "--state-dir",
            str(daemon_env.state_dir),
        ],
        env=daemon_env.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert inside.returncode == 0, inside.stderr
    doc = json.loads(inside.stdout)
    assert doc["running"] is True
    assert doc["pid"] == meta["pid"]


def test_stale_metadata_naming_a_live_process_is_not_a_daemon(daemon_env: DaemonEnv) -> None:
    # Given: an unrelated live process, and a stale state dir whose daemon.json, daemon.pid and a
    # fresh-looking heartbeat all name it, identity included — but nobody holds the lock
    bystander = subprocess.Popen(["sleep", "120"])
    try:
        state = daemon_env.state_dir
        state.mkdir(parents=True)
        (state / "daemon.lock").write_text("")
        identity = {
            **describe_self(),
            "pid": bystander.pid,
            "start_ticks": start_ticks(bystander.pid),
        }
        meta = {
            **identity,
            "instance_id": "0123456789ab",
            "started_at": "2026-01-01T00:00:00.000Z",
            "host": socket.gethostname(),
            "workers": 2,
            "dirs": {},
        }
        (state / "daemon.json").write_text(json.dumps(meta))
        (state / "daemon.pid").write_text(f"{bystander.pid}\n")
        beat = {"instance_id": "0123456789ab", "at": time.time(), "pid": bystander.pid}
        (state / "heartbeat.json").write_text(json.dumps(beat))

        # Then: ps says not running
        doc = daemon_env.ps()
        assert doc["running"] is False and doc["state"] == "stopped"

        # And: stop exits 0 and leaves the process alone
        proc = daemon_env.stop("--timeout", "2")
        assert proc.returncode == 0, proc.stderr
        assert "not running" in proc.stdout
        time.sleep(0.2)
        assert bystander.poll() is None and process_alive(bystander.pid)

        # And: start proceeds, with a daemon of its own
        new_meta = daemon_env.start_ok("--workers", "1")
        assert new_meta["pid"] != bystander.pid
        assert new_meta["instance_id"] != "0123456789ab"
        assert daemon_env.ps()["pid"] == new_meta["pid"]
        assert daemon_env.stop().returncode == 0
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait(timeout=10)


def test_describe_self_matches_what_the_daemon_records(daemon_env: DaemonEnv) -> None:
    """The identity fields stop relies on are present, so a local stop can verify its target."""
    meta = daemon_env.start_ok("--workers", "1")

    for key in ("pid", "host", "boot_id", "pid_namespace", "start_ticks", "instance_id"):
        assert meta.get(key) is not None, key
    assert meta["start_ticks"] == start_ticks(meta["pid"])
    assert meta["pid_namespace"] == describe_self()["pid_namespace"]
    assert sys.platform.startswith("linux")
