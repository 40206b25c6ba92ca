"""A FIFO, socket, directory, symlink, empty, torn or huge file in every store directory stops
nothing: a real daemon drains real tasks around it (each exactly once), its writers move the
entry to quarantine, and every reader — ``tm daemon ps``, ``tm queue stats``, ``tm dlq ls``,
``tm task show``, and the status routes — answers within a timeout.

And a record a worker of another uid may not read (mode 000) is no damage: it stays where it is,
is logged once with the fix, and ``tm daemon ps`` and ``/readyz`` report it until it is gone.
Tests run as root, which ignores mode bits, so that daemon runs as uid 65534 (``setpriv``).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from special_entries import KINDS, NOT_REGULAR, make_entry
from tm_testing import (
    ECHO_FLOW,
    NOBODY,
    FlowFiles,
    Processes,
    Tm,
    free_port,
    json_lines,
    key_record,
    read_records,
    tm_command,
    wait_until,
)
from tracemind.backend.file.pending import bucket_of
from tracemind.queue.names import InflightName, PendingName, done_bucket, new_task_id

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

ANSWER_S = 10.0
"""How long any reader may take to answer (a blocking open would take forever)."""
TASKS = 6
ROUTES = ("/livez", "/readyz", "/status", "/metrics")


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=ANSWER_S) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _place_everywhere(data: Path, state: Path, kind: str) -> dict[str, Path]:
    """One entry of ``kind`` in every store directory, named as a record there would be."""
    ids = [new_task_id(time.time()) for _ in range(4)]
    folders = {
        "pending": data / "queue" / "pending" / bucket_of(PendingName(0, ids[0], 0)),
        "inflight": data / "queue" / "inflight",
        "done": data / "queue" / "done" / done_bucket(ids[2]),
        "dlq": data / "dlq",
        "purged": data / "dlq" / "purged",
        "requeued": data / "dlq" / "requeued",
        "keys": data / "idempotency" / "keys",
        "state": state,
    }
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(b"special-key").hexdigest()[:40]
    names = {
        "pending": str(PendingName(0, ids[0], 0)),
        "pending-garbage": "garbage",
        "inflight": str(InflightName(ids[1], 1, "gone-0", "0" * 8, 0)),
        "done": f"{ids[2]}.json",
        "dlq": f"{ids[3]}.json",
        "purged": f"{ids[3]}.1.json",
        "requeued": f"{ids[3]}.2.json",
        "keys": f"{digest}.json",
        "state": "junk.json",
    }
    return {
        what: make_entry(folders[what.removesuffix("-garbage")] / name, kind)
        for what, name in names.items()
    }


def _answers(tm: Tm, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a reader; it must answer within :data:`ANSWER_S`, without a traceback."""
    proc = tm(*args, timeout_s=ANSWER_S, **kwargs)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


@pytest.mark.parametrize("kind", KINDS)
def test_a_special_entry_in_every_store_directory_stops_nothing(
    tm: Tm, flows: FlowFiles, record_dir: Path, data_root: Path, tmp_path: Path, kind: str
) -> None:
    # Given an entry of this kind in every store directory
    state = tmp_path / "state"
    special = _place_everywhere(data_root, state, kind)
    task_of = {
        "pending": special["pending"].name.split("_")[1],
        "inflight": special["inflight"].name.split("_")[0],
        "done": special["done"].name[:-5],
        "dlq": special["dlq"].name[:-5],
    }
    env = {"TM_ENABLE_DAEMON": "1"}
    # Then every reader answers before any writer ran
    stats = json.loads(_answers(tm, "queue", "stats", "--json").stdout)
    assert stats["pending"] == (0 if kind in NOT_REGULAR else 1)  # regular: counted by name
    assert json.loads(_answers(tm, "dlq", "ls", "--json").stdout) == []
    shown = _answers(tm, "task", "show", task_of["pending"], "--json")
    assert shown.returncode == 1 and json.loads(shown.stdout)["status"] == "damaged"
    assert _answers(tm, "task", "show", task_of["done"]).returncode in (0, 1)
    ps = json.loads(_answers(tm, "daemon", "ps", "--json", "--state-dir", state, env=env).stdout)
    assert ps["state"] == "stopped"

    # When tasks are enqueued (one with the key whose record is the special entry) and a daemon
    # with a status server runs them
    flow = flows.write("rec", "tm_test_hooks.record")
    ids = [_answers(tm, "enqueue", flow, "-i", f'{{"n": {n}}}').stdout.strip() for n in range(5)]
    keyed = _answers(tm, "enqueue", flow, "--idempotency-key", "special-key", "--json")
    assert keyed.returncode == 0, keyed.stderr
    ids.append(json.loads(keyed.stdout)["task_id"])
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "daemon.out"
    daemon = tm.start(
        "daemon", "start", "--foreground", "--inherit-logs", "--workers", "2",
        "--state-dir", state, "--status-bind", f"127.0.0.1:{port}", "--lease-s", "5",
        stdout=log, env=env,
    )  # fmt: skip
    try:
        wait_until(lambda: _done(tm, ids), 40, "the tasks to succeed")
        # Then each task ran exactly once
        runs = Counter(task_id for task_id, _, _ in read_records(record_dir))
        assert runs == dict.fromkeys(ids, 1)
        # And every reader and route answers within its timeout
        for route in ROUTES:
            assert get(url + route)[0] == 200, route
        ps = json.loads(
            _answers(tm, "daemon", "ps", "--state-dir", state, "--json", env=env).stdout
        )
        assert (ps["state"], ps["ready"], ps["queue"]["pending"]) == ("running", True, 0)
        assert _answers(tm, "daemon", "ps", "--state-dir", state, env=env).returncode == 0
        stats = json.loads(_answers(tm, "queue", "stats", "--json").stdout)
        # (a regular file named like a DLQ entry counts by its name until a writer reads it)
        dead_by_name = 0 if kind in NOT_REGULAR else 1
        assert (stats["pending"], stats["inflight"], stats["dead"]) == (0, 0, dead_by_name)
        assert json.loads(_answers(tm, "dlq", "ls", "--json").stdout) == []
        for what in ("pending", "inflight", "dlq"):
            assert _answers(tm, "task", "show", task_of[what]).returncode == 1, what
        # And a DLQ writer moves the entry named like a DLQ entry aside
        assert _answers(tm, "dlq", "requeue", "--all").returncode == 0
        # And the daemon stops when asked
        stop = tm("daemon", "stop", "--state-dir", state, env=env, timeout_s=30)
        assert stop.returncode == 0, stop.stderr
        assert daemon.wait(timeout=10) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait(timeout=10)
    # Writers moved what was in their way to quarantine, one log line each; the rest stays
    moved = {e["path"] for e in json_lines(log) if e.get("event") == "damaged record quarantined"}
    assert {str(special["pending-garbage"]), str(special["inflight"])} <= moved
    for what in ("pending", "pending-garbage", "inflight", "dlq"):
        assert not os.path.lexists(special[what]), what
    # (the key's record was moved aside, and the key now points at its new task)
    assert len(list((data_root / "idempotency" / "quarantine").iterdir())) == 1
    assert key_record(special["keys"])["task_id"] == ids[-1]
    for what in ("done", "purged", "requeued", "state"):
        assert os.path.lexists(special[what]), what


def _done(tm: Tm, ids: list[str]) -> bool:
    for task_id in ids:
        view = tm("task", "show", task_id, "--json", timeout_s=ANSWER_S)
        if view.returncode != 0 or json.loads(view.stdout)["status"] != "succeeded":
            return False
    return True


def test_a_state_dir_of_special_files_reads_as_no_daemon(tm: Tm, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    for name, kind in (
        ("daemon.json", "fifo"),
        ("heartbeat.json", "huge"),
        ("daemon.lock", "fifo"),
        ("daemon.pid", "socket"),
    ):
        make_entry(state / name, kind)

    ps = _answers(tm, "daemon", "ps", "--json", "--state-dir", state, env={"TM_ENABLE_DAEMON": "1"})

    assert ps.returncode == 3 and json.loads(ps.stdout)["running"] is False  # LSB: not running


# -- a record a worker may not read ------------------------------------------------------------


@pytest.fixture(scope="module")
def nobody_spawns(nobody_works: bool) -> bool:
    """Whether a process of uid 65534 can start this Python again (a daemon spawns its workers
    with it; a venv whose interpreter lives under a private home cannot)."""
    if not nobody_works:
        return False
    script = "import subprocess, sys; subprocess.run([sys.executable, '-c', ''], check=True)"
    probe = subprocess.run(
        [*NOBODY, "sh", "-c", 'exec "$0" -c "$1"', sys.executable, script],
        capture_output=True,
        timeout=30,
        check=False,
    )
    return probe.returncode == 0


def test_a_task_a_worker_may_not_read_is_left_in_place_logged_once_and_reported(
    tm: Tm, shared_tmp: Path, nobody_spawns: bool, processes: Processes
) -> None:
    if not nobody_spawns:
        pytest.skip("cannot run a daemon as another uid here (root, setpriv, a Python it runs)")
    # Given a data dir every uid may write, three tasks, and one of them mode 000 (root's)
    data, state = shared_tmp / "data", shared_tmp / "state"
    for folder in (data, state):
        folder.mkdir(mode=0o777)
        folder.chmod(0o777)
    env = {**tm.env, "TM_DATA_DIR": str(data), "XDG_CACHE_HOME": str(shared_tmp / "cache")}
    env["TM_ENABLE_DAEMON"] = "1"
    flow = shared_tmp / "echo.json"
    flow.write_text(json.dumps(ECHO_FLOW))
    ids = [tm("enqueue", flow, "-i", f'{{"n": {n}}}', env=env).stdout.strip() for n in range(3)]
    for path in [data, *data.rglob("*")]:
        path.chmod(0o777 if path.is_dir() else 0o666)
    [locked] = (data / "queue" / "pending").glob(f"*/*/*_{ids[0]}_0.json")
    locked.chmod(0o000)
    # When a daemon of another uid runs its workers
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = shared_tmp / "daemon.out"
    with open(log, "wb") as sink:
        daemon = processes.start(
            [*NOBODY, *tm_command(), "daemon", "start", "--foreground", "--inherit-logs",
             "--workers", "1", "--state-dir", str(state), "--status-bind", f"127.0.0.1:{port}"],
            env=env, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip

    def show(task_id: str) -> dict[str, Any]:
        return json.loads(tm("task", "show", task_id, "--json", env=env).stdout)

    wait_until(lambda: all(show(t)["status"] == "succeeded" for t in ids[1:]), 90, "the others")
    wait_until(lambda: get(url + "/readyz")[0] == 503, 10, "readiness to report the problem")
    time.sleep(3)  # several more relistings: it must stay logged once
    # Then the other tasks ran; this one stays pending, where it was, never quarantined
    assert show(ids[0])["status"] == "pending"
    assert locked.exists()
    assert not (data / "queue" / "quarantine").exists()
    # And it was logged once, with the fix
    lines = [e for e in json_lines(log) if e.get("path") == str(locked)]
    assert len(lines) == 1, lines
    assert lines[0]["uid"] == 65534 and "group" in lines[0]["fix"]
    # And `tm daemon ps` (any uid) and /readyz report it
    ps = json.loads(tm("daemon", "ps", "--json", "--state-dir", state, env=env).stdout)
    assert ps["running"] is True and ps["ready"] is False
    assert ps["unreadable_records"]["count"] == 1
    relative = str(locked.relative_to(data / "queue"))  # pending/<bucket>/<name>
    assert ps["unreadable_records"]["first"][0]["record"] == relative
    table = tm("daemon", "ps", "--state-dir", state, env=env).stdout
    assert f"unreadable: {relative} by uid 65534" in table
    status, body = get(url + "/readyz")
    assert status == 503 and "not readable" in json.loads(body)["reason"]
    assert get(url + "/livez")[0] == 200

    # When the mode is fixed, the task runs and the report goes away
    locked.chmod(0o666)
    wait_until(lambda: show(ids[0])["status"] == "succeeded", 30, "the task, once readable")
    wait_until(lambda: get(url + "/readyz")[0] == 200, 10, "readiness")
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=20) == 0
