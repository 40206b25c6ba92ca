"""`tm triggers init|validate|run`: in-process for init/validate, the real `tm` process for run."""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import tracemind
from tm_testing import free_port
from tracemind.cli import triggers as triggers_cli
from tracemind.errors import TraceMindError, UsageError

SRC_DIR = Path(tracemind.__file__).resolve().parents[1]


def tm(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="tm")
    triggers_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.handler(args))


def test_init_then_validate_round_trip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert tm("triggers", "init") == 0
    out = capsys.readouterr().out
    assert "wrote triggers.yaml" in out
    assert (tmp_path / "flows" / "hello.yaml").is_file()
    assert (tmp_path / "incoming").is_dir()
    sample = yaml.safe_load((tmp_path / "triggers.yaml").read_text())
    assert {t["kind"] for t in sample["triggers"]} == {"cron", "filesystem", "webhook"}
    assert tm("triggers", "validate") == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == "triggers.yaml: 3 triggers OK"
    assert captured.err == ""


def test_init_refuses_to_overwrite_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("# mine\n")
    with pytest.raises(UsageError, match="already exists \\(use --force"):
        tm("triggers", "init", "--path", str(path))
    assert path.read_text() == "# mine\n"
    assert tm("triggers", "init", "--path", str(path), "--force") == 0
    assert "kind: webhook" in path.read_text()


def test_validate_prints_one_line_per_problem_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "flows").mkdir()
    (tmp_path / "flows" / "bad.yaml").write_text("flow: {id: bad, steps: []}\n")
    path = tmp_path / "triggers.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "version": 1,
                "triggers": [
                    {
                        "id": "weekly",
                        "kind": "cron",
                        "cron": "every monday",
                        "flow": "flows/bad.yaml",
                    },
                    {"id": "broken", "kind": "cron", "cron": "@daily", "flow": "flows/bad.yaml"},
                ],
            }
        )
    )
    assert tm("triggers", "validate", "--path", str(path)) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert captured.out == ""
    assert len(lines) == 3, lines
    assert lines[0].startswith(f"{path}: trigger 'weekly': cron: invalid cron expression")
    # the flow is checked with the real flow loader, once per trigger
    assert lines[1].startswith(f"{path}: trigger 'weekly': flow: ")
    assert lines[2].startswith(f"{path}: trigger 'broken': flow: ")
    assert "Traceback" not in captured.err


def test_run_help_says_it_only_enqueues(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        tm("triggers", "run", "--help")
    assert "tm workers start" in capsys.readouterr().out


# ---- `tm triggers run` as a real process ---------------------------------------------------


def env_for(data_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC_DIR), env.get("PYTHONPATH", "")])
    env["TM_DATA_DIR"] = str(data_dir)
    env["TM_WEBHOOK_SECRET"] = "shh"
    return env


@pytest.fixture
def project_dir(tmp_path: Path) -> Path:
    assert tm("triggers", "init", "--path", str(tmp_path / "triggers.yaml")) == 0
    return tmp_path


def write_run_config(project_dir: Path, port: int) -> Path:
    path = project_dir / "run.yaml"
    hook = {
        "id": "orders",
        "kind": "webhook",
        "route": "/hooks/orders",
        "bind_port": port,
        "secret_env": "TM_WEBHOOK_SECRET",
        "flow": "flows/hello.yaml",
        "input": {"name": "{{ body.name }}", "order": "{{ body }}"},
    }
    path.write_text(yaml.safe_dump({"version": 1, "triggers": [hook]}))
    return path


@pytest.fixture
def spawn(project_dir: Path) -> Iterator[Any]:
    processes: list[subprocess.Popen[str]] = []

    def start(*argv: str) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [sys.executable, "-m", "tracemind", *argv],
            cwd=project_dir,
            env=env_for(project_dir / "data"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        processes.append(process)
        return process

    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def post(port: int, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("POST", "/hooks/orders", body=json.dumps(body), headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def wait_until_listening(port: int, process: subprocess.Popen[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port} after {timeout_s}s")


def tm_main(
    project_dir: Path, *argv: str, timeout_s: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tracemind", *argv],
        cwd=project_dir,
        env=env_for(project_dir / "data"),
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


@pytest.mark.slow
def test_run_enqueues_webhook_events_that_workers_then_execute(
    project_dir: Path, spawn: Any
) -> None:
    # Given `tm triggers run` serving a webhook
    port = free_port()
    process = spawn("triggers", "run", "--config", str(write_run_config(project_dir, port)))
    wait_until_listening(port, process, timeout_s=20)
    # When an order arrives twice with the same Idempotency-Key
    headers = {"X-TraceMind-Secret": "shh", "Idempotency-Key": "order-1"}
    status, first = post(port, {"name": "Ada", "id": 1}, headers)
    again_status, again = post(port, {"name": "Ada", "id": 1}, headers)
    # Then one task is enqueued, the repeat answered 200 with the same id
    assert (status, first["duplicate"]) == (202, False)
    assert (again_status, again) == (200, {"task_id": first["task_id"], "duplicate": True})
    # And SIGTERM stops the process cleanly
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=15)
    assert process.returncode == 0, err
    assert "tm workers start" in err
    # And a worker pool runs the enqueued task with the rendered, JSON-typed input
    drained = tm_main(project_dir, "workers", "start", "--burst")
    assert drained.returncode == 0, drained.stderr
    shown = tm_main(project_dir, "task", "show", first["task_id"], "--json")
    assert shown.returncode == 0, shown.stderr
    task = json.loads(shown.stdout)
    assert task["status"] == "succeeded"
    assert task["result"]["greeting"] == "Hello, Ada!"
    assert task["result"]["order"] == {"name": "Ada", "id": 1}
    assert task["idempotency_key"] == "orders:order-1"
    assert task["trigger"]["trigger_id"] == "orders"
    assert task["trigger"]["kind"] == "webhook"


def test_run_with_an_invalid_config_exits_2_and_starts_nothing(
    project_dir: Path, spawn: Any
) -> None:
    path = project_dir / "bad.yaml"
    path.write_text("version: 1\ntriggers:\n  - {id: weekly, kind: cron, cron: every monday}\n")
    process = spawn("triggers", "run", "--config", str(path))
    _, err = process.communicate(timeout=30)
    assert process.returncode == 2
    lines = err.splitlines()
    assert len(lines) == 2
    assert all("trigger 'weekly'" in line for line in lines)
    assert not (project_dir / "data").exists()


def test_run_with_a_busy_port_exits_1_naming_it(project_dir: Path, spawn: Any) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        process = spawn("triggers", "run", "--config", str(write_run_config(project_dir, port)))
        _, err = process.communicate(timeout=30)
    assert process.returncode == 1
    assert f"127.0.0.1:{port}" in err
    assert err.strip().startswith("tm: error: webhook orders: cannot listen on")
    assert "Traceback" not in err


def test_handlers_raise_tracemind_errors_for_user_mistakes(tmp_path: Path) -> None:
    with pytest.raises(TraceMindError):
        tm("triggers", "init", "--path", str(tmp_path))  # a directory
