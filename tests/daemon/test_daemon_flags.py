"""TM_ENABLE_DAEMON gates the ``tm daemon`` verbs that change something (and ``tm run
--detached``); ``tm daemon ps`` is read-only and runs without it."""

from __future__ import annotations

import json

import pytest
from daemon_harness import ECHO_FLOW, DaemonEnv

VERBS = [
    ("daemon", "start"),
    ("daemon", "start", "--foreground"),
    ("daemon", "stop"),
]


@pytest.mark.parametrize("flag", [None, "0", "no", ""])
@pytest.mark.parametrize("verb", VERBS, ids=" ".join)
def test_daemon_verbs_need_the_flag(
    daemon_env: DaemonEnv, verb: tuple[str, ...], flag: str | None
) -> None:
    # Given: an environment without TM_ENABLE_DAEMON (or with a false value)
    env = dict(daemon_env.env)
    del env["TM_ENABLE_DAEMON"]
    if flag is not None:
        env["TM_ENABLE_DAEMON"] = flag

    # When: any daemon verb runs
    proc = daemon_env.tm(*verb, "--state-dir", daemon_env.state_dir, env=env)

    # Then: exit 1, a message naming the variable (with --json: as JSON on stdout), and nothing
    # was created or started
    assert proc.returncode == 1, proc.stdout + proc.stderr
    if "--json" in verb:
        assert proc.stderr == ""
        error = json.loads(proc.stdout)
        assert error["exit"] == 1 and "TM_ENABLE_DAEMON" in error["error"]
    else:
        assert "TM_ENABLE_DAEMON" in proc.stderr
        assert proc.stdout == ""
    assert not daemon_env.state_dir.exists()
    assert not daemon_env.data_dir.exists()


@pytest.mark.parametrize("flag", [None, "0"])
def test_ps_runs_without_the_flag_and_creates_nothing(
    daemon_env: DaemonEnv, flag: str | None
) -> None:
    # Given: an environment without TM_ENABLE_DAEMON (or with a false value), and no daemon
    env = dict(daemon_env.env)
    del env["TM_ENABLE_DAEMON"]
    if flag is not None:
        env["TM_ENABLE_DAEMON"] = flag

    # When: ps runs, as a table and as JSON
    table = daemon_env.tm("daemon", "ps", "--state-dir", daemon_env.state_dir, env=env)
    as_json = daemon_env.tm("daemon", "ps", "--json", "--state-dir", daemon_env.state_dir, env=env)

    # Then: it reports the daemon as not running, exits 3 (LSB status), and creates nothing
    assert table.returncode == 3, table.stdout + table.stderr
    assert table.stdout.startswith("daemon: not running") and table.stderr == ""
    assert as_json.returncode == 3, as_json.stdout + as_json.stderr
    doc = json.loads(as_json.stdout)
    assert doc["state"] == "stopped" and doc["status_url"] is None
    assert not daemon_env.state_dir.exists()
    assert not daemon_env.data_dir.exists()


def test_default_state_dir_is_not_created_without_the_flag(daemon_env: DaemonEnv) -> None:
    # Given: no --state-dir, so the state dir would be $TM_DATA_DIR/state
    env = dict(daemon_env.env)
    del env["TM_ENABLE_DAEMON"]

    # When: start runs without the flag
    proc = daemon_env.tm("daemon", "start", env=env)

    # Then: nothing exists under the data dir
    assert proc.returncode == 1
    assert "TM_ENABLE_DAEMON" in proc.stderr
    assert not daemon_env.data_dir.exists()


def test_detached_run_needs_the_flag(daemon_env: DaemonEnv) -> None:
    env = dict(daemon_env.env)
    del env["TM_ENABLE_DAEMON"]
    flow = daemon_env.root / "echo.json"
    flow.write_text(json.dumps(ECHO_FLOW))

    proc = daemon_env.tm("run", flow, "--detached", env=env)

    assert proc.returncode == 1
    assert "TM_ENABLE_DAEMON" in proc.stderr
    assert not daemon_env.data_dir.exists()
