"""daemon.json is written by whoever can write the state dir: stop and ps signal only a process
the kernel shows holding daemon.lock, and start says "already running" only of a daemon that
answers.

Each scenario uses real processes: an unrelated ``sleep`` that a forged daemon.json names, and a
process that holds daemon.lock without being a daemon (as another user of the group could).
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import DaemonEnv, daemon_pids, process_alive

from tm_testing import wait_until
from tracemind.daemon.identity import (
    describe_self,
    holds_lock,
    lock_holders,
    start_ticks,
    verify_daemon,
)

HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o666)
fcntl.flock(fd, fcntl.LOCK_EX)
open(sys.argv[2], "w").close()
time.sleep(60)
"""


@pytest.fixture
def bystander() -> Iterator[subprocess.Popen[bytes]]:
    """An unrelated live process (what a forged daemon.json points at)."""
    proc = subprocess.Popen(["sleep", "60"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture
def lock_holder(daemon_env: DaemonEnv) -> Iterator[subprocess.Popen[bytes]]:
    """A process that is not a daemon holding daemon.lock (exclusive flock) until killed."""
    daemon_env.state_dir.mkdir(parents=True, exist_ok=True)
    ready = daemon_env.root / "holder.ready"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(daemon_env.state_dir / "daemon.lock"), str(ready)]
    )
    try:
        wait_until(ready.exists, 10, "the lock holder to take daemon.lock")
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


def forge(state_dir: Path, pid: int, **fields: Any) -> dict[str, Any]:
    """A daemon.json naming ``pid`` with every identity field right (boot id, PID namespace,
    start time) and a fresh heartbeat: all a forger can write."""
    (state_dir / "tmp").mkdir(exist_ok=True)  # as a daemon that ran there left it
    meta = {
        **describe_self(),
        "pid": pid,
        "start_ticks": start_ticks(pid),
        "instance_id": "0123456789ab",
        "started_at": "2026-01-01T00:00:00.000Z",
        "workers": 1,
        "dirs": {},
        **fields,
    }
    (state_dir / "daemon.json").write_text(json.dumps(meta))
    (state_dir / "daemon.pid").write_text(f"{pid}\n")
    beat = {"instance_id": meta["instance_id"], "at": time.time() + 600, "pid": pid}
    (state_dir / "heartbeat.json").write_text(json.dumps(beat))
    return meta


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    [line] = proc.stderr.splitlines()
    assert line.startswith("tm: error: "), line
    return line


def test_forged_daemon_json_naming_a_live_process_is_never_signalled(
    daemon_env: DaemonEnv,
    bystander: subprocess.Popen[bytes],
    lock_holder: subprocess.Popen[bytes],
) -> None:
    # Given: daemon.lock held (by a process that is no daemon), and a daemon.json naming an
    # unrelated live process with its exact identity and a fresh heartbeat
    forge(daemon_env.state_dir, bystander.pid)

    # When: ps looks
    doc = daemon_env.ps()
    table = daemon_env.tm_ok("daemon", "ps", "--state-dir", daemon_env.state_dir)

    # Then: it reports the pid as not verified, saying what differs and who holds the lock
    assert doc["pid"] == bystander.pid and doc["pid_verified"] is False
    assert f"process {bystander.pid} does not hold daemon.lock" in doc["pid_note"]
    assert f"held by pid {lock_holder.pid} " in doc["pid_note"]
    assert f"pid {bystander.pid} not verified here: " in table

    # When: stop, gentle then forced, runs past its timeout
    gentle = daemon_env.stop("--timeout", "1", "--no-force")
    forced = daemon_env.stop("--timeout", "1")

    # Then: both exit 1 saying what differs; neither process was signalled
    assert gentle.returncode == 1 and "not signalled" in one_error_line(gentle)
    assert forced.returncode == 1
    line = one_error_line(forced)
    assert f"process {bystander.pid} does not hold daemon.lock" in line
    assert f"held by pid {lock_holder.pid} " in line and "was not signalled" in line
    assert "PID namespace" not in line
    time.sleep(0.2)
    assert bystander.poll() is None and lock_holder.poll() is None


def test_forged_daemon_json_beside_a_running_daemon_stops_it_through_the_state_dir(
    daemon_env: DaemonEnv, bystander: subprocess.Popen[bytes]
) -> None:
    # Given: a running daemon whose daemon.json was then rewritten to name an unrelated process
    real = daemon_env.start_ok("--workers", "1")
    forge(daemon_env.state_dir, bystander.pid, instance_id=real["instance_id"])
    assert daemon_env.ps()["pid_verified"] is False

    # When: stop
    proc = daemon_env.stop("--timeout", "20")

    # Then: the daemon picked up the stop request and exited; the named process got no signal
    assert proc.returncode == 0, proc.stderr
    wait_until(lambda: not process_alive(real["pid"]), 10, "the real daemon to exit")
    events = daemon_env.log_events()
    assert any(e["event"] == "stop requested" for e in events)
    assert not any(e["event"] == "drain requested" for e in events)  # no SIGTERM reached it
    assert bystander.poll() is None


def test_a_real_daemon_is_verified(daemon_env: DaemonEnv) -> None:
    meta = daemon_env.start_ok("--workers", "1")

    doc = daemon_env.ps()

    assert doc["pid_verified"] is True and doc["pid_note"] is None
    assert holds_lock(meta["pid"], daemon_env.state_dir / "daemon.lock")
    assert lock_holders(daemon_env.state_dir / "daemon.lock") == [meta["pid"]]


def test_only_a_different_start_time_is_reported_as_such(
    daemon_env: DaemonEnv, lock_holder: subprocess.Popen[bytes]
) -> None:
    # Given: daemon.json names the very process holding the lock, but with another start time
    # (its PID was reused since the recording, or the file is stale)
    ticks = start_ticks(lock_holder.pid)
    assert ticks is not None
    forge(daemon_env.state_dir, lock_holder.pid, start_ticks=ticks - 1)

    # When: stop runs past its timeout
    proc = daemon_env.stop("--timeout", "1")

    # Then: the message says the start time differs, not that it runs in another namespace
    assert proc.returncode == 1
    line = one_error_line(proc)
    assert f"process {lock_holder.pid} started at clock tick {ticks}" in line
    assert f"not at the recorded {ticks - 1}" in line
    assert "namespace" not in line and "container" not in line
    assert lock_holder.poll() is None


@pytest.mark.parametrize("meta", ["none", "dead daemon"])
@pytest.mark.parametrize("mode", ["detached", "foreground"])
def test_a_lock_held_by_a_process_that_is_no_daemon_is_not_already_running(
    daemon_env: DaemonEnv, lock_holder: subprocess.Popen[bytes], mode: str, meta: str
) -> None:
    # Given: daemon.lock held by a process that is not a daemon (no daemon.json, or the one a
    # dead daemon left, whose last heartbeat says it stopped)
    if meta == "dead daemon":
        dead = subprocess.Popen(["true"])
        dead.wait(timeout=10)
        forged = forge(daemon_env.state_dir, dead.pid)
        beat = {"instance_id": forged["instance_id"], "at": time.time(), "stopped": True}
        (daemon_env.state_dir / "heartbeat.json").write_text(json.dumps(beat))

    # When: start
    args = ["--workers", "1"] + (["--inherit-logs", "--foreground"] if mode == "foreground" else [])
    started = time.monotonic()
    proc = daemon_env.start(*args)

    # Then: exit 1 with one line naming the holder; no "already running", nothing started
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "already running" not in proc.stdout + proc.stderr
    line = one_error_line(proc)
    assert f"daemon.lock is held by pid {lock_holder.pid} " in line
    assert "no daemon answers" in line
    assert time.monotonic() - started < 30  # LOCK_WAIT_S plus at most ANSWER_WAIT_S
    assert daemon_pids(daemon_env.state_dir) == []
    assert lock_holder.poll() is None


def test_verify_daemon_explains_what_differs(tmp_path: Path) -> None:
    lock = tmp_path / "daemon.lock"
    me = describe_self()
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        assert not verify_daemon(me, lock).proven  # not locked yet
        assert "does not hold daemon.lock" in verify_daemon(me, lock).reason
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert verify_daemon(me, lock).proven
        assert lock_holders(lock) == [os.getpid()]

        other_ns = verify_daemon({**me, "pid_namespace": "pid:[1]"}, lock)
        assert not other_ns.proven and other_ns.elsewhere
        assert "another PID namespace" in other_ns.reason
        other_boot = verify_daemon({**me, "boot_id": "0" * 32}, lock)
        assert not other_boot.proven and other_boot.elsewhere
        assert "boot id differs" in other_boot.reason
        reused = verify_daemon({**me, "start_ticks": me["start_ticks"] + 1}, lock)
        assert not reused.proven and not reused.elsewhere
        assert "started at clock tick" in reused.reason and "namespace" not in reused.reason
        assert not verify_daemon({**me, "pid": "1"}, lock).proven
    finally:
        os.close(fd)
    assert lock_holders(lock) == []


STARTING_DAEMON = """
import fcntl, json, os, sys, time
from tracemind.daemon.identity import describe_self
state = sys.argv[1]
fd = os.open(os.path.join(state, "daemon.lock"), os.O_RDWR | os.O_CREAT, 0o666)
fcntl.flock(fd, fcntl.LOCK_EX)
open(sys.argv[2], "w").close()
time.sleep(1.5)  # taking over: daemon.json and the heartbeat still describe the last run
meta = {**describe_self(), "instance_id": "fedcba987654", "workers": 1, "dirs": {}}
with open(os.path.join(state, "daemon.json"), "w") as out:
    json.dump(meta, out)
for _ in range(300):
    with open(os.path.join(state, "heartbeat.json"), "w") as out:
        json.dump({"instance_id": "fedcba987654", "at": time.time(), "pid": os.getpid()}, out)
    time.sleep(0.2)
"""


def test_start_waits_for_a_daemon_that_is_taking_over(daemon_env: DaemonEnv) -> None:
    # Given: the state a cleanly stopped daemon left, and a process that takes the lock and only
    # 1.5 s later writes its own daemon.json and heartbeats, as a daemon starting up does
    state = daemon_env.state_dir
    state.mkdir(parents=True)
    gone = subprocess.Popen(["true"])
    gone.wait(timeout=10)
    forge(state, gone.pid, instance_id="0123456789ab")
    last = {"instance_id": "0123456789ab", "at": time.time() - 60, "stopped": True}
    (state / "heartbeat.json").write_text(json.dumps(last))
    ready = daemon_env.root / "starting.ready"
    starting = subprocess.Popen(
        [sys.executable, "-c", STARTING_DAEMON, str(state), str(ready)], env=daemon_env.env
    )
    try:
        wait_until(ready.exists, 10, "the starting daemon to take the lock")

        # When: start runs meanwhile
        proc = daemon_env.start("--workers", "1")

        # Then: it waited for the answer, and reports that daemon as running
        assert proc.returncode == 0, proc.stderr
        assert f"daemon already running (pid {starting.pid})" in proc.stdout
        assert daemon_pids(state) == []
    finally:
        starting.kill()
        starting.wait(timeout=10)
