"""The dashboard tests' harness: a real foreground daemon with its status server on 127.0.0.1,
plain HTTP requests, and a client that enqueues into the daemon's data root in-process.

A module of its own (not conftest.py) so test modules can import it by name. Every subprocess
call, request and wait is bounded; teardown stops every daemon a test started, by its PID.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tm_testing import FlowFiles, Tm, free_port, json_lines, wait_until
from tracemind.client import Client

HTTP_TIMEOUT_S = 5.0
STOP_TIMEOUT_S = 30.0
DRAIN_TIMEOUT_S = 5


@dataclass
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json_doc(self) -> Any:
        return json.loads(self.body)


def request(
    method: str, url: str, headers: Mapping[str, str] | None = None, body: bytes | None = None
) -> Reply:
    """One HTTP request; any status (4xx/5xx included) is a reply, not an exception."""
    req = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_S) as response:
            return Reply(response.status, response.headers, response.read())
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, exc.headers, exc.read())


def port_free(port: int) -> bool:
    """Whether nothing accepts connections on 127.0.0.1:port."""
    with socket.socket() as probe:
        probe.settimeout(1.0)
        return probe.connect_ex(("127.0.0.1", port)) != 0


class StatusDaemon:
    """``tm daemon start --foreground`` with ``--status-bind 127.0.0.1:<port>``, 2 workers."""

    def __init__(self, tm: Tm, root: Path, env: Mapping[str, str] | None = None) -> None:
        self.tm = tm
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = root / "daemon.out"
        self.state_dir = root / "state"
        self.env = {"TM_ENABLE_DAEMON": "1", **(env or {})}
        self.process: subprocess.Popen[Any] | None = None

    def start(self, *extra: str) -> None:
        """Start with ``extra`` flags (the port must be free: a killed daemon's status server
        may linger a moment) and wait until ready."""
        wait_until(lambda: port_free(self.port), 15, f"port {self.port} to be free")
        self.process = self.tm.start(
            "daemon", "start", "--foreground", "--inherit-logs",
            "--workers", "2",
            "--drain-timeout", str(DRAIN_TIMEOUT_S),
            "--state-dir", str(self.state_dir),
            "--status-bind", f"127.0.0.1:{self.port}",
            *extra,
            stdout=self.log,
            env=self.env,
        )  # fmt: skip
        wait_until(self.ready, 30, "the daemon's readiness")

    def ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"daemon exited {self.process.returncode}: {self.log.read_text()}")
        with contextlib.suppress(OSError):
            return request("GET", f"{self.url}/readyz").status == 200
        return False

    def kill(self) -> None:
        """SIGKILL the daemon (its workers and status server die with it)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=STOP_TIMEOUT_S)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=STOP_TIMEOUT_S)

    def log_events(self, event: str) -> list[dict[str, Any]]:
        return [line for line in json_lines(self.log) if line.get("event") == event]

    def get(self, path: str, headers: Mapping[str, str] | None = None) -> Reply:
        return request("GET", self.url + path, headers)

    def post(self, path: str, headers: Mapping[str, str] | None = None) -> Reply:
        return request("POST", self.url + path, headers, body=b"")


@dataclass
class Work:
    """Flows and an in-process client on the test's data root."""

    client: Client
    flows: FlowFiles

    def echo(self) -> Path:
        return self.flows.write("dash-echo", "tracemind.steps.echo")

    def failing(self) -> Path:
        """Fails every attempt with ``state["message"]`` (default "fail step"), no retry."""
        return self.flows.write("dash-fail", "tracemind.steps.fail", retry={"max_attempts": 1})

    def sleeping(self) -> Path:
        return self.flows.write("dash-sleep", "tracemind.steps.sleep")

    def fail_unless_file(self) -> Path:
        """Fails (no retry) until the file ``state["marker"]`` exists."""
        return self.flows.write(
            "dash-fixable", "tm_test_hooks.fail_unless_file", retry={"max_attempts": 1}
        )
