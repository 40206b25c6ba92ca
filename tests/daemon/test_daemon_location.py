"""The location is the one serialized form of "where the data is": a daemon records it (redacted)
in daemon.json, hands the full text to its children through their environment only, reports it
as ``queue_url`` for every location, and still reads the ``dirs`` of a daemon.json written by the
previous version."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from daemon_harness import DaemonEnv, daemon_pids

from tracemind.backend import open_backend
from tracemind.backend.location import Location
from tracemind.daemon import control
from tracemind.daemon.service import Daemon
from tracemind.daemon.settings import DaemonSettings
from tracemind.daemon.state import StateDir
from tracemind.daemon.status_doc import status_document
from tracemind.flows.single import step_flow
from tracemind.worker.settings import PoolSettings, WorkerSettings

SECRET = "s3cr3t-pa55"
REDIS = f"redis://worker:{SECRET}@127.0.0.1:6379/0?prefix=tm"


def _settings(tmp_path: Path, location: Location) -> DaemonSettings:
    worker = WorkerSettings(location, False, "tracemind.worker.runtime:FlowRuntime", 30.0, None)
    return DaemonSettings(PoolSettings(1, "0123456789ab", worker), tmp_path / "state", 8.0)


def _seed(location: Location) -> None:
    """One pending task at ``location``."""
    submitter = open_backend(location, durable=False).submitter(3600.0)
    submitter.submit(step_flow("tracemind.steps.echo"), {})


# -- the password never leaves the environment -------------------------------------------------


def test_daemon_json_records_the_location_redacted(tmp_path: Path) -> None:
    # Given a daemon whose location holds a password
    daemon = Daemon(_settings(tmp_path, Location.parse(REDIS)))
    daemon.state.prepare()
    # When it writes its metadata
    daemon._write_metadata()
    # Then daemon.json names the location without the password
    text = daemon.state.meta_path.read_text()
    assert SECRET not in text
    assert json.loads(text)["queue_url"] == "redis://worker:***@127.0.0.1:6379/0?prefix=tm"
    assert "dirs" not in json.loads(text)


def test_the_detached_daemon_gets_the_location_in_its_environment_not_its_argv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a start whose child process is recorded instead of run
    seen: dict[str, Any] = {}

    def popen(argv: list[str], **kwargs: Any) -> Any:
        seen.update(argv=argv, env=kwargs["env"])
        return SimpleNamespace(pid=1, poll=lambda: 0)  # exits 0: "another daemon runs"

    monkeypatch.setattr(control.subprocess, "Popen", popen)
    monkeypatch.setenv("TM_QUEUE_DIR", "/stale/queue")
    state = StateDir(tmp_path / "state")
    argv = ["daemon", "start", "--foreground", "--state-dir", str(state.root)]
    # When a daemon is started on a location with a password
    control.start_detached(state, argv, Location.parse(REDIS), None, "0123456789ab")
    # Then only its environment holds the full location, and no directory overrides it
    assert not any(SECRET in word for word in seen["argv"])
    assert seen["env"]["TM_QUEUE_URL"] == REDIS
    assert "TM_QUEUE_DIR" not in seen["env"]


def test_ps_and_the_status_document_show_the_location_redacted(tmp_path: Path) -> None:
    # Given a backend whose location holds a password (counts from an empty stand-in)
    backend = SimpleNamespace(
        location=Location.parse(REDIS),
        unreadable_records=lambda: (0, []),
        counts=lambda: (SimpleNamespace(pending=0, inflight=0, delayed=0,
                                        oldest_pending_age_s=None), 0, 0),
        registry=SimpleNamespace(live=lambda now_s=None: []),
        queue=SimpleNamespace(held_by=lambda prefix: 0),
    )  # fmt: skip
    # When the status document is made
    doc = status_document(StateDir(tmp_path / "state"), backend)  # type: ignore[arg-type]
    # Then it names the location, redacted
    assert doc["queue_url"] == "redis://worker:***@127.0.0.1:6379/0?prefix=tm"
    assert SECRET not in json.dumps(doc)


def test_the_worker_spec_carries_the_one_settings_object(tmp_path: Path) -> None:
    settings = _settings(tmp_path, Location.for_root(str(tmp_path / "data dir")))
    spec = settings.pool.worker_spec("0123456789ab-1-abcd", 1)
    again = type(spec).from_json(spec.to_json())
    assert again == spec and again.settings is not spec.settings
    assert again.share == (1, settings.pool.size)
    assert again.settings.location.file_dirs()[0] == str(tmp_path / "data dir" / "queue")


# -- every location is reported; the daemon serves what it was given ----------------------------


@pytest.mark.slow
def test_a_daemon_on_three_directories_reports_and_serves_their_location(
    daemon_env: DaemonEnv,
) -> None:
    # Given three data directories that share no root, given as the seed's flags
    dirs = [daemon_env.root / "q" / "queue", daemon_env.root / "keys", daemon_env.root / "dead"]
    flags = ["--queue-dir", str(dirs[0]), "--idempotency-dir", str(dirs[1])]
    flags += ["--dlq-dir", str(dirs[2])]
    expected = str(Location.for_file_dirs(*map(str, dirs)))
    # When a daemon starts on them
    meta = daemon_env.start_ok("--workers", "1", *flags)
    # Then daemon.json and ps name that one location, and its command line names none
    assert meta["queue_url"] == expected and "dirs" not in meta
    ps = daemon_env.tm_ok("daemon", "ps", "--json", "--state-dir", daemon_env.state_dir, *flags)
    assert json.loads(ps)["queue_url"] == expected
    [pid] = daemon_pids(daemon_env.state_dir)
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode()
    assert "--queue-dir" not in cmdline and str(dirs[2]) not in cmdline
    # And its workers serve those directories
    flow = daemon_env.flow("echo", "tracemind.steps.echo")
    task_id = json.loads(daemon_env.tm_ok("enqueue", flow, "--json", *flags))["task_id"]
    done = daemon_env.tm_ok("task", "wait", task_id, "--json", "--timeout", "30", *flags)
    assert json.loads(done)["status"] == "succeeded"


# -- a state dir written by the previous version ------------------------------------------------


def _old_meta(root: Path, instance_id: str) -> dict[str, Any]:
    """daemon.json as the previous version wrote it: three directories, no queue_url."""
    return {
        "instance_id": instance_id,
        "pid": 999_999_999,
        "host": os.uname().nodename,
        "dirs": {
            "queue": str(root / "queue"),
            "idempotency": str(root / "idempotency"),
            "dlq": str(root / "dlq"),
        },
    }


def test_ps_counts_the_queue_an_old_daemon_json_names(tmp_path: Path) -> None:
    # Given a state dir written by the previous version, and one task in its queue
    root = tmp_path / "old-data"
    _seed(Location.for_root(str(root)))
    state = StateDir(tmp_path / "state")
    state.prepare()
    state.write_json(state.meta_path, _old_meta(root, "0123456789ab"))
    # When ps runs where no location is set
    env = {k: v for k, v in os.environ.items() if not k.startswith("TM_")}
    proc = subprocess.run(
        [sys.executable, "-m", "tracemind", "daemon", "ps", "--json", "--state-dir", state.root],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # Then it counts that queue and names its location
    doc = json.loads(proc.stdout)
    assert proc.returncode == 3 and doc["queue"]["pending"] == 1, proc.stdout + proc.stderr
    assert doc["queue_url"] == f"file://{root}"


def test_a_forced_stop_returns_the_leases_an_old_daemon_json_names(tmp_path: Path) -> None:
    # Given a task leased by a worker of a daemon started by the previous version
    root = tmp_path / "old-data"
    location = Location.for_root(str(root))
    _seed(location)
    queue = open_backend(location, durable=False).queue
    assert queue.lease("0123456789ab-0-beef", 30.0) is not None
    # When its leases are returned as a forced stop does
    control._return_leases(_old_meta(root, "0123456789ab"))
    # Then the task is pending again
    assert queue.stats().pending == 1 and queue.stats().inflight == 0
