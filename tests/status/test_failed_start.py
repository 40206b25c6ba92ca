"""A daemon that cannot start says why on stderr and stdout at once and, when
``TM_START_ERROR_HOLD_S`` asks (the image does), answers status requests 503 with the same line
until a probe has read it, so a container health check reports it too; then it exits 1."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tm_testing import Tm, free_port, wait_until
from tracemind.status.failed_start import hold_s_from

pytestmark = pytest.mark.slow


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_hold_setting() -> None:
    assert [hold_s_from(v) for v in (None, "", "8", "2.5", "-1", "soon")] == [0, 0, 8, 2.5, 0, 0]


def test_unwritable_data_is_reported_to_the_first_probe_then_the_daemon_exits(
    tm: Tm, tmp_path: Path
) -> None:
    # Given a data root whose queue directory cannot be made (a file in its way: a mode would
    # not stop root), and the image's hold setting
    data = tmp_path / "data"
    data.mkdir()
    (data / "queue").write_text("not a directory")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    out = tmp_path / "daemon.out"
    env = {"TM_ENABLE_DAEMON": "1", "TM_DATA_DIR": str(data), "TM_START_ERROR_HOLD_S": "20"}

    # When the daemon starts in the foreground with a status port
    started = time.monotonic()
    proc = tm.start(
        "daemon", "start", "--foreground", "--inherit-logs",
        "--state-dir", tmp_path / "state", "--status-bind", f"127.0.0.1:{port}",
        stdout=out, env=env,
    )  # fmt: skip

    # Then the reason is in its output at once: one line on stderr, its JSON twin on stdout
    def reported() -> list[str]:
        return [line for line in out.read_text().splitlines() if "not writable" in line]

    lines = wait_until(lambda: len(reported()) == 2 and reported(), 10, "the two lines")
    event = json.loads(next(line for line in lines if line.startswith("{")))
    plain = next(line for line in lines if line.startswith("tm: error: "))
    assert event["event"] == "daemon failed" and event["level"] == "error"
    assert event["error"] in plain and f"{data / 'queue'}: not writable" in plain
    # And a probe (what `tm health` does) gets 503 with the same reason
    status, body = wait_until(lambda: _probe(url), 10, "the failure server")
    assert status == 503 and json.loads(body)["reason"] == event["error"]
    health = tm("health", "--url", url)
    assert health.returncode == 1 and "TM_UID/TM_GID" in health.stdout
    # And once a probe was answered it exits 1, well before the hold's 20 s
    assert proc.wait(timeout=15) == 1
    assert time.monotonic() - started < 15
    assert _probe(url) is None
    assert not (tmp_path / "state").exists() or not any((tmp_path / "state").iterdir())


def _probe(url: str) -> tuple[int, str] | None:
    try:
        return _get(url + "/readyz")
    except OSError:
        return None
