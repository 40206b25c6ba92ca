"""``tm daemon ps`` shows the status URL its caller can reach: the daemon's own on its host,
``TM_STATUS_URL`` when set, the published one (``TM_STATUS_PUBLISHED_URL``, set by compose.yaml)
from another host, and none once the daemon has stopped."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tm_testing import Tm, free_port, tm_command, wait_until
from tracemind.cli.daemon import reachable_status_url

pytestmark = pytest.mark.slow

PUBLISHED = "http://127.0.0.1:18080"


def _doc(state: str = "running", host: str | None = None, url: str | None = None) -> dict[str, Any]:
    return {"state": state, "host": host, "status_url": url}


def test_reachable_url_rules() -> None:
    here = os.uname().nodename
    inside = "http://127.0.0.1:8080"
    meta = {"status_url_published": PUBLISHED}
    # On the daemon's own host: what it recorded.
    assert reachable_status_url(_doc(host=here, url=inside), meta, {}) == inside
    # From another host: the published URL, or nothing when the daemon was not told one.
    assert reachable_status_url(_doc(host="c0ffee", url=inside), meta, {}) == PUBLISHED
    assert reachable_status_url(_doc(host="c0ffee", url=inside), {}, {}) is None
    # TM_STATUS_URL wins wherever the caller is.
    env = {"TM_STATUS_URL": "http://10.0.0.5:9000"}
    assert reachable_status_url(_doc(host="c0ffee", url=inside), meta, env) == env["TM_STATUS_URL"]
    # No status server, or a stopped daemon: no URL at all.
    assert reachable_status_url(_doc(host=here, url=None), meta, env) is None
    for state in ("stopped",):
        assert reachable_status_url(_doc(state, host=here, url=inside), meta, env) is None
    assert reachable_status_url(_doc("unresponsive", host=here, url=inside), meta, {}) == inside


def daemon_running(tm: Tm, state_dir: Path) -> bool:
    doc = json.loads(tm("daemon", "ps", "--json", "--state-dir", state_dir).stdout)
    return bool(doc["running"])


def _ps(tm: Tm, state_dir: Path, env: dict[str, str]) -> tuple[int, dict[str, Any], str]:
    as_json = tm("daemon", "ps", "--json", "--state-dir", state_dir, env=env)
    table = tm("daemon", "ps", "--state-dir", state_dir, env=env)
    assert as_json.returncode == table.returncode, as_json.stderr + table.stderr
    return as_json.returncode, json.loads(as_json.stdout), table.stdout


def test_ps_shows_the_url_for_this_side_and_none_once_stopped(tm: Tm, tmp_path: Path) -> None:
    # Given a daemon serving status on a port, told (as compose tells it) where it is published
    port = free_port()
    state_dir = tmp_path / "state"
    env = {"TM_ENABLE_DAEMON": "1", "TM_STATUS_PUBLISHED_URL": PUBLISHED}
    proc = tm.start(
        "daemon", "start", "--foreground", "--inherit-logs", "--workers", "1",
        "--state-dir", state_dir, "--status-bind", f"0.0.0.0:{port}",
        stdout=tmp_path / "daemon.out", env=env,
    )  # fmt: skip
    ps_env = {"TM_ENABLE_DAEMON": ""}
    try:
        wait_until(lambda: daemon_running(tm, state_dir), 30, "the daemon")

        # When ps runs on the daemon's host: the URL it serves on (0.0.0.0 -> 127.0.0.1), exit 0
        code, doc, table = _ps(tm, state_dir, ps_env)
        assert code == 0
        assert doc["status_url"] == f"http://127.0.0.1:{port}"
        assert f"status: http://127.0.0.1:{port}" in table
        # And with TM_STATUS_URL set: that one
        code, doc, table = _ps(tm, state_dir, {**ps_env, "TM_STATUS_URL": "http://10.0.0.5:9"})
        assert doc["status_url"] == "http://10.0.0.5:9" and "status: http://10.0.0.5:9" in table
        # And from another host (a UTS namespace with another hostname, when we may make one):
        # the published URL
        if os.geteuid() == 0 and shutil.which("unshare"):
            other = subprocess.run(
                ["unshare", "--uts", "sh", "-c", 'hostname elsewhere && exec "$@"', "sh",
                 *tm_command(), "daemon", "ps", "--json", "--state-dir", str(state_dir)],
                env={**tm.env, **ps_env}, cwd=tm.cwd, capture_output=True, text=True,
                timeout=60, check=False,
            )  # fmt: skip
            assert other.returncode == 0, other.stderr
            assert json.loads(other.stdout)["status_url"] == PUBLISHED
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0

    # When the daemon has stopped: no URL (it would point at nothing), and exit 3
    code, doc, table = _ps(tm, state_dir, {**ps_env, "TM_STATUS_URL": "http://10.0.0.5:9"})
    assert code == 3
    assert doc["state"] == "stopped" and doc["status_url"] is None
    assert table.startswith("daemon: not running") and "status:" not in table
