"""Triggers inside a running daemon lead to executed tasks: real ``tm`` processes end to end.

Each test gets its own folder (a flow running ``tracemind.steps.echo``, an ``incoming/`` folder,
``triggers.yaml``), data dir (``TM_DATA_DIR``) and state dir (``--state-dir``); the webhook
listens on 127.0.0.1 on a free port picked here. Every subprocess call and wait is bounded, and
the teardown stops the daemon with ``tm daemon stop`` (then, only if that failed, kills the PID
recorded in daemon.json after verifying it is that very process).
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from tm_testing import free_port, task_file_bytes, wait_until
from tracemind.daemon.identity import is_same_process
from tracemind.daemon.state import StateDir
from tracemind.queue.records import parse_task_file

SUBPROCESS_TIMEOUT_S = 60.0
ECHO_FLOW = """\
flow:
  id: echo
  entry: echo
  steps:
    - {id: echo, kind: task, hooks: {run: tracemind.steps.echo}}
    - {id: end, kind: finish}
  edges:
    - {from: echo, to: end}
"""
PS_KEYS = {
    "id",
    "kind",
    "last_fire",
    "next_fire",
    "enqueued",
    "deduplicated",
    "failed",
    "last_error",
}


def tm_command() -> list[str]:
    script = Path(sys.executable).parent / "tm"
    return [str(script)] if script.exists() else [sys.executable, "-m", "tracemind"]


def parse_utc(text: str) -> datetime:
    assert text.endswith("Z"), text
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclass
class Site:
    """One test's project folder, data and state dirs, and ``tm`` bound to them."""

    root: Path
    env: dict[str, str]
    port: int

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def incoming(self) -> Path:
        return self.root / "incoming"

    def tm(self, *args: str | os.PathLike[str], timeout_s: float = SUBPROCESS_TIMEOUT_S) -> Any:
        return subprocess.run(
            [*tm_command(), *map(str, args)],
            env=self.env,
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )

    def write_config(self, *triggers: dict[str, Any], name: str = "triggers.yaml") -> Path:
        path = self.root / name
        path.write_text(yaml.safe_dump({"version": 1, "triggers": list(triggers)}))
        return path

    def start(self, config: Path) -> subprocess.CompletedProcess[str]:
        proc: subprocess.CompletedProcess[str] = self.tm(
            "daemon", "start", "--state-dir", self.state_dir, "--workers", "2",
            "--enable-triggers", "--triggers-config", config.name,
        )  # fmt: skip
        return proc

    def start_ok(self, config: Path) -> None:
        proc = self.start(config)
        assert proc.returncode == 0, proc.stdout + proc.stderr + self.log_tail()
        assert "daemon started" in proc.stdout, proc.stdout

    def stop(self) -> None:
        proc = self.tm("daemon", "stop", "--state-dir", self.state_dir, "--timeout", "20")
        assert proc.returncode == 0, proc.stdout + proc.stderr + self.log_tail()
        assert StateDir(self.state_dir).lock_held() is False

    def ps(self) -> dict[str, Any]:
        proc = self.tm("daemon", "ps", "--json", "--state-dir", self.state_dir)
        doc: dict[str, Any] = json.loads(proc.stdout)
        assert proc.returncode == (3 if doc["state"] == "stopped" else 0), proc.stderr
        return doc

    def triggers(self) -> dict[str, dict[str, Any]]:
        """The ``ps`` trigger entries by id (empty while the daemon is not running)."""
        return {entry["id"]: entry for entry in self.ps()["triggers"]}

    def wait_task(self, task_id: str, timeout_s: float = 30.0) -> dict[str, Any]:
        proc = self.tm(
            "task", "wait", task_id, "--timeout", str(timeout_s), "--json",
            timeout_s=timeout_s + 30,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr + self.log_tail()
        doc: dict[str, Any] = json.loads(proc.stdout)
        return doc

    def show(self, task_id: str) -> dict[str, Any]:
        proc = self.tm("task", "show", task_id, "--json")
        assert proc.returncode == 0, proc.stderr
        doc: dict[str, Any] = json.loads(proc.stdout)
        return doc

    def records(self, *states: str) -> list[dict[str, Any]]:
        """Every task record in the queue's ``states`` folders (default: all of them)."""
        found = []
        for state in states or ("pending", "inflight", "done"):
            folder = self.data_dir / "queue" / state
            pattern = {"pending": "*/*/*.json", "done": "*/*.json"}.get(state, "*.json")
            for path in sorted(folder.glob(pattern)) if folder.is_dir() else []:
                with contextlib.suppress(FileNotFoundError):  # claimed or finished meanwhile
                    record, completion = parse_task_file(task_file_bytes(path))
                    found.append({**record, **(completion or {})})
        return found

    def done_of(self, trigger_id: str) -> list[dict[str, Any]]:
        return [
            record
            for record in self.records("done")
            if (record.get("trigger") or {}).get("trigger_id") == trigger_id
        ]

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            tail = (self.state_dir / "daemon.log").read_text(errors="replace").splitlines()
            return "\n--- daemon.log tail ---\n" + "\n".join(tail[-lines:])
        return ""

    def cleanup(self) -> None:
        if not (self.state_dir / "daemon.lock").exists():
            return
        meta = StateDir(self.state_dir).meta()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.tm("daemon", "stop", "--state-dir", self.state_dir, "--timeout", "10",
                    timeout_s=30)  # fmt: skip
        if StateDir(self.state_dir).lock_held() and meta is not None and is_same_process(meta):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(meta["pid"]), signal.SIGKILL)  # the daemon leads its own group


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    (tmp_path / "flows").mkdir()
    (tmp_path / "flows" / "echo.yaml").write_text(ECHO_FLOW)
    (tmp_path / "incoming").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TM_")}
    env.update(TM_ENABLE_DAEMON="1", TM_DATA_DIR=str(tmp_path / "data"), PYTHONUNBUFFERED="1")
    harness = Site(tmp_path, env, free_port())
    try:
        yield harness
    finally:
        harness.cleanup()


def three_triggers(port: int) -> list[dict[str, Any]]:
    return [
        {
            "id": "tick",
            "kind": "cron",
            "cron": "@every 1s",
            "flow": "flows/echo.yaml",
            "input": {"at": "{{ scheduled_at }}", "kind": "{{ trigger_kind }}"},
        },
        {
            "id": "hook",
            "kind": "webhook",
            "route": "/hooks/orders",
            "bind_host": "127.0.0.1",
            "bind_port": port,
            "allow_unauthenticated": True,
            "flow_id": "flows/echo.yaml",  # the alias of flow:
            "input": {
                "order": "{{ body.order }}",
                "whole": "{{ body }}",
                "items": "{{ body.order.items }}",
                "label": "order {{ body.order.id }} of {{ body.order.items }}",
                "missing": "{{ body.nope }}",
                "constant": 3,
            },
        },
        {
            "id": "files",
            "kind": "filesystem",
            "path": "incoming",
            "pattern": "*.json",
            "interval_seconds": 0.5,
            "flow": "flows/echo.yaml",
            "input": {"name": "{{ name }}", "size": "{{ size }}"},
        },
    ]


def post(
    port: int, route: str, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(
            "POST",
            route,
            body=body,
            headers={"Content-Type": "application/json", **(headers or {})},
        )
        response = connection.getresponse()
        payload: dict[str, Any] = json.loads(response.read())
        return response.status, payload
    finally:
        connection.close()


def trigger_keys(records: list[dict[str, Any]]) -> Counter[str]:
    """How many tasks carry each trigger key (``_trigger.key``, which is also the task's
    idempotency key)."""
    keys: Counter[str] = Counter()
    for record in records:
        trigger = record.get("trigger") or {}
        assert trigger.get("key") == record.get("idempotency_key"), record
        if trigger.get("key") is not None:
            keys[trigger["key"]] += 1
    return keys


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_triggers_in_the_daemon_enqueue_tasks_that_its_workers_run(site: Site) -> None:
    config = site.write_config(*three_triggers(site.port))
    site.start_ok(config)

    # `tm daemon start` returned, so the webhook already listens (no retry needed).
    order = {"order": {"id": 7, "items": [1, 2]}, "note": "first"}
    status, accepted = post(
        site.port, "/hooks/orders", json.dumps(order).encode(), {"Idempotency-Key": "order-7"}
    )
    assert (status, accepted["duplicate"]) == (202, False), accepted
    done = site.wait_task(accepted["task_id"])
    assert done["status"] == "succeeded"
    assert done["result"] == {
        "order": {"id": 7, "items": [1, 2]},  # an object stays an object
        "whole": order,
        "items": [1, 2],
        "label": "order 7 of [1,2]",  # inside a longer string: JSON text
        "missing": None,
        "constant": 3,
    }
    assert done["idempotency_key"] == "hook:order-7"
    assert done["trigger"]["trigger_id"] == "hook"
    assert done["trigger"]["kind"] == "webhook"
    assert done["trigger"]["key"] == "hook:order-7"
    parse_utc(done["trigger"]["time"])

    status, again = post(
        site.port, "/hooks/orders", b'{"order": {"id": 8}}', {"Idempotency-Key": "order-7"}
    )
    assert (status, again) == (200, {"task_id": accepted["task_id"], "duplicate": True})
    replies = [post(site.port, "/hooks/orders", b"{}") for _ in range(2)]  # no Idempotency-Key
    assert [(code, reply["duplicate"]) for code, reply in replies] == [(202, False)] * 2
    unkeyed = [reply["task_id"] for _, reply in replies]
    assert len(set(unkeyed)) == 2 and accepted["task_id"] not in unkeyed
    for task_id in unkeyed:
        assert site.wait_task(task_id)["trigger"]["key"] is None

    # A file dropped into the watched folder: one task, once (also after more polls).
    (site.incoming / "skip.txt").write_text("not matched by *.json")
    staging = site.root / "drop.json.part"
    staging.write_text('{"rows": 3}')
    staging.rename(site.incoming / "drop.json")
    wait_until(lambda: site.done_of("files"), 15, "the filesystem trigger's task")
    time.sleep(1.5)  # three more polls
    (file_task,) = site.done_of("files")
    assert file_task["result"] == {"name": "drop.json", "size": 11}
    assert file_task["trigger"]["kind"] == "filesystem"
    assert file_task["idempotency_key"].startswith("files:drop.json:11:")

    # The cron trigger: at least three fires, every one executed, one task per scheduled time.
    wait_until(lambda: len(site.done_of("tick")) >= 3, 15, "three cron tasks")
    ticks = site.done_of("tick")
    scheduled = sorted(parse_utc(task["result"]["at"]) for task in ticks)
    for task in ticks:
        assert task["status"] == "succeeded"
        assert task["result"]["kind"] == "cron"
        assert "_trigger" not in task["result"]  # metadata is in ctx, not in the state
        assert task["idempotency_key"] == f"tick:{task['result']['at']}"
    assert all(moment.microsecond == 0 for moment in scheduled)  # on the epoch-aligned grid
    steps = [(later - earlier).total_seconds() for earlier, later in itertools.pairwise(scheduled)]
    assert all(step >= 1 and step == int(step) for step in steps), steps
    assert steps.count(1) >= len(steps) / 2, f"@every 1s fired {steps} apart"
    shown = site.show(ticks[0]["task_id"])
    assert shown["trigger"]["key"] == ticks[0]["idempotency_key"]
    assert shown["trigger"]["kind"] == "cron"

    # `ps` lists the three triggers, in config order, with their counts.
    def ps_caught_up() -> dict[str, dict[str, Any]] | None:
        entries = site.triggers()
        ready = (
            entries.get("tick", {}).get("enqueued", 0) >= 3
            and entries.get("hook", {}).get("enqueued") == 3
            and entries.get("hook", {}).get("deduplicated") == 1
            and entries.get("files", {}).get("enqueued") == 1
        )
        return entries if ready else None

    entries = wait_until(ps_caught_up, 10, "ps to show the trigger counts")
    assert [(e["id"], e["kind"]) for e in site.ps()["triggers"]] == [
        ("tick", "cron"),
        ("hook", "webhook"),
        ("files", "filesystem"),
    ]
    for entry in entries.values():
        assert set(entry) == PS_KEYS, entry
        assert entry["failed"] == 0 and entry["last_error"] is None, entry
        parse_utc(entry["last_fire"])
    assert parse_utc(entries["tick"]["next_fire"]) > parse_utc(entries["tick"]["last_fire"])
    assert entries["hook"]["next_fire"] is None and entries["files"]["next_fire"] is None
    assert entries["files"]["deduplicated"] == 0

    # Restart: nothing that already fired fires again, and missed times are not caught up.
    site.stop()
    fired_before = trigger_keys(site.records())
    last_fire = json.loads((site.state_dir / "triggers" / "tick.json").read_text())["last_fire"]
    assert f"tick:{last_fire}" in fired_before
    time.sleep(2.5)  # at least two scheduled times pass while nothing runs
    site.start_ok(config)
    restarted_at = float(json.loads((site.state_dir / "daemon.json").read_text())["started_at_s"])
    status, after = post(
        site.port, "/hooks/orders", b'{"order": {"id": 9}}', {"Idempotency-Key": "order-7"}
    )
    assert (status, after) == (200, {"task_id": accepted["task_id"], "duplicate": True})

    def new_ticks() -> list[str]:
        keys = trigger_keys(site.records())
        return [key for key in keys if key.startswith("tick:") and key not in fired_before]

    wait_until(lambda: len(new_ticks()) >= 2, 15, "two cron fires after the restart")
    time.sleep(1.0)  # more filesystem polls after the restart
    site.stop()

    records = site.records()
    keys = trigger_keys(records)
    assert [key for key, count in keys.items() if count > 1] == []
    assert [r["task_id"] for r in records if r["trigger"]["trigger_id"] == "files"] == [
        file_task["task_id"]
    ]
    hook_tasks = [r for r in records if r["trigger"]["trigger_id"] == "hook"]
    assert len(hook_tasks) == 3
    for key in new_ticks():
        when = parse_utc(key.removeprefix("tick:"))
        assert when > parse_utc(last_fire)
        assert when.timestamp() > restarted_at, f"{key}: a missed time was caught up"
    final = json.loads((site.state_dir / "triggers" / "tick.json").read_text())["last_fire"]
    assert parse_utc(final) > parse_utc(last_fire)


@pytest.mark.parametrize(
    ("trigger", "expected"),
    [
        ({"cron": "every monday"}, "trigger 'weekly': cron: invalid cron expression"),
        ({"cron": "@daily", "every": 5}, "trigger 'weekly': unknown key 'every'"),
        ({"cron": "@daily", "timezone": "Mars/Olympus"}, "unknown timezone 'Mars/Olympus'"),
        ({"cron": "@daily", "flow": "flows/missing.yaml"}, "flow file not found"),
    ],
)
def test_an_invalid_triggers_config_exits_2_and_starts_nothing(
    site: Site, trigger: dict[str, Any], expected: str
) -> None:
    config = site.write_config(
        {"id": "weekly", "kind": "cron", "flow": "flows/echo.yaml", **trigger}
    )
    proc = site.start(config)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert expected in proc.stderr
    assert proc.stderr.count("\n") == 1  # one line
    assert "Traceback" not in proc.stderr
    assert not (site.state_dir / "daemon.json").exists()
    assert StateDir(site.state_dir).lock_held() is False
    assert not site.data_dir.exists()
    assert site.ps()["running"] is False


def test_a_webhook_port_in_use_exits_1_naming_the_port(site: Site) -> None:
    config = site.write_config(*three_triggers(site.port))
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", site.port))
        taken.listen(1)
        proc = site.start(config)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert f"127.0.0.1:{site.port}" in proc.stderr
        assert "in use" in proc.stderr
        assert "webhook hook" in proc.stderr
        assert "Traceback" not in proc.stderr
        assert StateDir(site.state_dir).lock_held() is False
        time.sleep(1.5)  # the cron trigger (every second) would have fired by now
        assert site.ps()["running"] is False
        assert site.records() == []
        assert not (site.state_dir / "triggers").exists()
