"""Only a stop request that ``tm daemon stop`` could have written stops the daemon: a FIFO,
directory or torn file named ``stop.request`` in its state dir is ignored (with one log line)."""

from __future__ import annotations

import os
import time

import pytest
from daemon_harness import DaemonEnv

from tm_testing import wait_until


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["fifo", "directory", "torn"])
def test_a_special_or_torn_stop_request_does_not_stop_the_daemon(
    daemon_env: DaemonEnv, kind: str
) -> None:
    # Given a running daemon
    daemon_env.start_ok("--workers", "1")
    request = daemon_env.state_dir / "stop.request"
    # When something that is not a stop request appears under that name
    if kind == "fifo":
        os.mkfifo(request)
    elif kind == "directory":
        request.mkdir()
    else:
        request.write_text('{"instance_')
    # Then, after several heartbeats, it still runs, and said why it ignored it once
    beat = (daemon_env.heartbeat() or {}).get("at")
    wait_until(lambda: (daemon_env.heartbeat() or {}).get("at") != beat, 10, "a heartbeat")
    time.sleep(2.5)
    assert daemon_env.ps()["running"] is True
    ignored = [e for e in daemon_env.log_events() if e["event"].startswith("stop request ignored")]
    assert len(ignored) == 1
    # And a real stop still works once it is gone
    request.rmdir() if kind == "directory" else request.unlink()
    stop = daemon_env.stop()
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert daemon_env.ps()["running"] is False


@pytest.mark.slow
def test_a_fifo_where_the_log_goes_fails_start_with_one_line_instead_of_hanging(
    daemon_env: DaemonEnv,
) -> None:
    daemon_env.state_dir.mkdir(parents=True, exist_ok=True)
    os.mkfifo(daemon_env.state_dir / "daemon.log")
    started = time.monotonic()
    proc = daemon_env.start("--workers", "1")
    assert time.monotonic() - started < 20
    assert proc.returncode != 0 and "not a regular file" in proc.stderr, proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert daemon_env.ps()["running"] is False
