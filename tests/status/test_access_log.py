"""The status server's access log: one JSON object per request with its fields, and the probes
Docker and the kubelet send every few seconds left out unless ``TM_STATUS_LOG_PROBES=1``."""

from __future__ import annotations

import signal
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tm_testing import Tm, free_port, json_lines, wait_until

pytestmark = pytest.mark.slow

PROBES = ("/livez", "/readyz", "/healthz")


def _served(tm: Tm, tmp_path: Path, env: dict[str, str]) -> list[dict[str, Any]]:
    """Start a daemon with a status server, GET every route once, stop it; its access lines."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    out = tmp_path / "daemon.out"
    proc = tm.start(
        "daemon", "start", "--foreground", "--inherit-logs", "--workers", "1",
        "--state-dir", tmp_path / "state", "--status-bind", f"127.0.0.1:{port}",
        stdout=out, env={"TM_ENABLE_DAEMON": "1", **env},
    )  # fmt: skip
    try:

        def ready() -> bool:
            try:
                with urllib.request.urlopen(url + "/readyz", timeout=5) as response:
                    return bool(response.status == 200)
            except OSError:
                return False

        wait_until(ready, 30, "readiness")
        for path in (*PROBES, "/status", "/metrics"):
            with urllib.request.urlopen(url + path, timeout=5) as response:
                assert response.status == 200, path
        wait_until(
            lambda: any(e.get("path") == "/metrics" for e in json_lines(out)), 10, "the access line"
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    return [e for e in json_lines(out) if e.get("logger") == "gunicorn.access"]


def test_access_lines_have_fields_and_leave_out_probes(tm: Tm, tmp_path: Path) -> None:
    # Given a daemon's status server with the default settings, When every route is read once
    lines = _served(tm, tmp_path, {})

    # Then /status and /metrics are logged, each with its fields...
    by_path = {line["path"]: line for line in lines}
    assert set(by_path) == {"/status", "/metrics"}, lines
    metrics = by_path["/metrics"]
    assert metrics["event"] == "request served" and metrics["level"] == "info"
    assert (metrics["method"], metrics["status"], metrics["remote"]) == ("GET", 200, "127.0.0.1")
    assert isinstance(metrics["duration_ms"], float) and 0 <= metrics["duration_ms"] < 5000
    assert metrics["timestamp"].endswith("Z")
    # ... and none of the probes is
    assert not any(line["path"] in PROBES for line in lines)


def test_probes_are_logged_when_asked(tm: Tm, tmp_path: Path) -> None:
    lines = _served(tm, tmp_path, {"TM_STATUS_LOG_PROBES": "1"})

    logged = {line["path"] for line in lines}
    assert {*PROBES, "/status", "/metrics"} <= logged
    assert all(line["status"] == 200 for line in lines if line["path"] in PROBES)
