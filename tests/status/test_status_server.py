"""The status endpoint on a plain host: a foreground daemon with ``--status-bind`` on 127.0.0.1,
real HTTP, real signals. (The same endpoint inside the container is covered by tests/container.)"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tm_testing import FlowFiles, Tm, free_port, json_lines, wait_until

pytestmark = pytest.mark.slow


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie has exited: it only waits for its parent to reap it.
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def children_of(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    return [int(child) for child in text.split()]


class Daemon:
    def __init__(self, tm: Tm, tmp_path: Path) -> None:
        self.tm = tm
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / "daemon.out"
        self.state_dir = tmp_path / "state"
        self.env = {"TM_ENABLE_DAEMON": "1"}
        self.process: subprocess.Popen[Any] | None = None

    def start(self, *extra: str) -> subprocess.Popen[Any]:
        self.process = self.tm.start(
            "daemon",
            "start",
            "--foreground",
            "--inherit-logs",
            "--workers",
            "1",
            "--state-dir",
            str(self.state_dir),
            "--status-bind",
            f"127.0.0.1:{self.port}",
            *extra,
            stdout=self.log,
            env=self.env,
        )
        return self.process

    def ready(self) -> bool:
        try:
            return get(f"{self.url}/readyz")[0] == 200
        except OSError:
            return False


@pytest.fixture
def daemon(tm: Tm, tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tm, tmp_path)
    yield d
    if d.process is not None and d.process.poll() is None:
        d.process.send_signal(signal.SIGTERM)
        d.process.wait(timeout=20)


def test_every_route_answers_over_http_and_bodies_hold_no_task_input(
    daemon: Daemon, tm: Tm, flows: FlowFiles
) -> None:
    # Given a daemon with a status server on 127.0.0.1, and a task carrying a secret
    daemon.start()
    wait_until(daemon.ready, 30, "readiness")
    flow = flows.write("echo", "tracemind.steps.echo")
    task_id = tm("enqueue", flow, "-i", '{"token": "s3cr3t-value"}').stdout.strip()
    wait_until(
        lambda: tm.json("task", "show", task_id, "--json")["status"] == "succeeded", 30, "the task"
    )

    # When every route is read
    bodies = {
        route: get(daemon.url + route)
        for route in ("/livez", "/healthz", "/readyz", "/status", "/metrics")
    }

    # Then every probe answers 200, /status is `tm daemon ps --json`, /metrics is Prometheus text
    assert {route: status for route, (status, _) in bodies.items()} == dict.fromkeys(bodies, 200)
    assert json.loads(bodies["/livez"][1])["status"] == "alive"
    status = json.loads(bodies["/status"][1])
    ps = tm.json("daemon", "ps", "--json", "--state-dir", str(daemon.state_dir), env=daemon.env)
    assert status.keys() == ps.keys() and status["instance_id"] == ps["instance_id"]
    assert status["running"] is True and status["status_url"] == daemon.url
    assert "tracemind_queue_pending 0.0" in bodies["/metrics"][1]
    assert "tracemind_workers_alive 1.0" in bodies["/metrics"][1]
    assert all("s3cr3t-value" not in body for _, body in bodies.values())
    # And gunicorn's own log lines are JSON too, like every line of the daemon's output
    events = json_lines(daemon.log)
    assert any(e.get("logger") == "gunicorn.error" for e in events)
    assert len(events) == len(daemon.log.read_text().splitlines())


def test_tm_health_probes_readiness_by_default_and_liveness_on_request(
    daemon: Daemon, tm: Tm
) -> None:
    # Given nothing listening yet: both probes fail
    assert tm("health", "--url", daemon.url).returncode == 1
    assert tm("health", "--probe", "live", "--url", daemon.url).returncode == 1
    # When the daemon is up
    daemon.start()
    wait_until(daemon.ready, 30, "readiness")
    # Then both succeed, finding the URL in the state dir without --url
    found = tm("health", "--state-dir", str(daemon.state_dir))
    assert found.returncode == 0 and "/readyz" in found.stdout
    assert tm("health", "--probe", "live", "--url", daemon.url).returncode == 0


def test_readyz_turns_503_when_the_drain_begins(daemon: Daemon, tm: Tm, flows: FlowFiles) -> None:
    # Given a daemon busy with a task that takes a few seconds
    proc = daemon.start("--drain-timeout", "10")
    wait_until(daemon.ready, 30, "readiness")
    flow = flows.write("slow", "tracemind.steps.sleep")
    tm("enqueue", flow, "-i", '{"seconds": 3}')
    wait_until(
        lambda: json.loads(get(daemon.url + "/status")[1])["workers"]["busy"] == 1, 30, "busy"
    )

    # When SIGTERM arrives
    proc.send_signal(signal.SIGTERM)

    # Then readiness is 503 (draining) while the task finishes, and liveness stays 200
    _, body = wait_until(
        lambda: (r := get(daemon.url + "/readyz"))[0] == 503 and r, 2, "readiness to turn 503"
    )
    assert json.loads(body)["reason"] == "draining"
    assert get(daemon.url + "/livez")[0] == 200
    assert proc.wait(timeout=30) == 0


def test_a_status_port_already_taken_is_a_startup_error(daemon: Daemon, tm: Tm) -> None:
    # Given someone else listening on the port
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", daemon.port))
        squatter.listen()
        # When the daemon starts (detached) with that status port
        result = tm(
            "daemon", "start", "--state-dir", str(daemon.state_dir),
            "--status-bind", f"127.0.0.1:{daemon.port}",
            env=daemon.env,
        )  # fmt: skip
    # Then it fails with a message naming the port, and no daemon runs
    assert result.returncode == 1
    assert f"status port 127.0.0.1:{daemon.port} is already in use" in result.stderr
    assert "Traceback" not in result.stderr
    ps = tm("daemon", "ps", "--json", "--state-dir", str(daemon.state_dir), env=daemon.env)
    assert ps.returncode == 3 and json.loads(ps.stdout)["running"] is False


def test_the_status_server_never_outlives_the_daemon(daemon: Daemon) -> None:
    # Given a running daemon and its gunicorn child
    proc = daemon.start()
    wait_until(daemon.ready, 30, "readiness")
    status_pids = [
        pid
        for pid in children_of(proc.pid)
        if b"gunicorn" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]
    assert len(status_pids) == 1
    arbiter = status_pids[0]
    served_by = [arbiter, *children_of(arbiter)]

    # When the daemon is killed outright (no chance to stop its children)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)

    # Then the status server dies with it: nothing answers "alive" for a dead daemon
    wait_until(lambda: not any(pid_alive(pid) for pid in served_by), 15, "gunicorn to exit")
    with pytest.raises(OSError):
        get(daemon.url + "/livez")


HALF_OPEN_CLIENTS = 200
PROBE_TIMEOUT_S = 1.0
PROBE_WINDOW_S = 8.0  # longer than any per-connection wait a server applies before giving up


def timed_probe(port: int, route: str) -> tuple[int, float]:
    """One probe on a fresh connection, as Docker's HEALTHCHECK or kubelet sends it:
    (status, seconds taken); raises OSError (socket.timeout) past PROBE_TIMEOUT_S."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=PROBE_TIMEOUT_S) as sock:
        sock.sendall(f"GET {route} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
            if time.monotonic() - started > PROBE_TIMEOUT_S:
                raise TimeoutError(f"{route} took over {PROBE_TIMEOUT_S} s")
    return int(reply.split(b" ", 2)[1]), time.monotonic() - started


def test_probes_answer_within_a_second_while_200_slow_clients_hold_connections(
    daemon: Daemon,
) -> None:
    # Given a ready daemon and 200 clients: most sent half a request header, the rest nothing
    daemon.start()
    wait_until(daemon.ready, 30, "readiness")
    slow: list[socket.socket] = []
    try:
        for n in range(HALF_OPEN_CLIENTS):
            sock = socket.create_connection(("127.0.0.1", daemon.port), timeout=5)
            slow.append(sock)
            if n % 4:
                sock.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\n")  # no blank line: never ends

        # When the probes run for longer than any per-connection wait of the server
        timings: list[tuple[str, int, float]] = []
        deadline = time.monotonic() + PROBE_WINDOW_S
        while time.monotonic() < deadline:
            for route in ("/livez", "/readyz"):
                status, took_s = timed_probe(daemon.port, route)
                timings.append((route, status, took_s))
            time.sleep(0.2)
    finally:
        for sock in slow:
            sock.close()

    # Then every probe answered 200 within a second (well inside Docker's 5 s)
    assert len(timings) >= 20
    assert {(route, status) for route, status, _ in timings} == {("/livez", 200), ("/readyz", 200)}
    assert max(took_s for _, _, took_s in timings) < PROBE_TIMEOUT_S
