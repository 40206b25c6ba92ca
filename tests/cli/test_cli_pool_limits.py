"""Limits of the worker pool's command lines: a bounded worker count, a read-only data directory
and workers that cannot start each end ``tm workers start`` / ``tm daemon start`` with one line
and a nonzero exit — never a fork storm, a traceback or a respawn loop.

A read-only data directory is a real read-only bind mount in a private mount namespace
(``unshare -m``, root on Linux); where that is not possible, a 0555 tree that ``tm`` sees as
uid 65534 (``setpriv``); the tests skip where neither works.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from tm_testing import ECHO_FLOW, NOBODY, Tm, files_under
from tracemind.backend.location import Location
from tracemind.cli.parser import build_parser
from tracemind.config import MAX_WORKERS
from tracemind.errors import UsageError
from tracemind.worker.pool import WorkerPool
from tracemind.worker.settings import PoolSettings, WorkerSettings

DAEMON_ON = {"TM_ENABLE_DAEMON": "1"}
READ_ONLY_BIND = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" "$0" && exec "$@"'


# -- the worker count ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["workers", "start", "-n", "100000"],
        ["workers", "start", "--workers", str(MAX_WORKERS + 1)],
        ["workers", "start", "-n", "0"],
        ["workers", "start", "-n", "many"],
        ["daemon", "start", "--workers", "100000"],
        ["daemon", "start", "--workers", "-3"],
    ],
    ids=" ".join,
)
def test_a_worker_count_out_of_bounds_is_one_line_exit_2(
    tm: Tm, data_root: Path, args: list[str]
) -> None:
    started = time.monotonic()
    proc = tm(*args, env=DAEMON_ON, timeout_s=30)

    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    [line] = proc.stderr.splitlines()
    assert "error: argument" in line and ("workers" in line or "-n" in line)
    assert time.monotonic() - started < 10
    assert not data_root.exists(), files_under(data_root)


def test_the_bound_is_named_and_inclusive() -> None:
    parsed = build_parser("workers").parse_args(["workers", "start", "-n", str(MAX_WORKERS)])
    assert parsed.workers == MAX_WORKERS
    with pytest.raises(SystemExit):
        build_parser("daemon").parse_args(["daemon", "start", "--workers", str(MAX_WORKERS + 1)])


def test_the_pool_itself_refuses_a_size_out_of_bounds(tmp_path: Path) -> None:
    worker = WorkerSettings(Location.for_root(str(tmp_path)), False, "m:f", 30.0, None)
    for size in (0, MAX_WORKERS + 1):
        settings = PoolSettings(size, "0123456789ab", worker)
        with pytest.raises(UsageError, match=f"1 to {MAX_WORKERS} workers"):
            WorkerPool(settings, queue=None)  # type: ignore[arg-type]


# -- workers that cannot start --------------------------------------------------------------------


def test_burst_workers_that_keep_dying_at_start_end_the_run(
    tm: Tm, tmp_path: Path, data_root: Path
) -> None:
    # Given: a pending task and a runtime whose factory always raises
    helpers = tmp_path / "broken_runtime"
    helpers.mkdir()
    (helpers / "tm_broken_runtime.py").write_text(
        "def factory():\n    raise RuntimeError('cannot start')\n"
    )
    flow = tmp_path / "echo.json"
    flow.write_text(json.dumps(ECHO_FLOW))
    tm.json("enqueue", flow, "--json")
    env = {"PYTHONPATH": os.pathsep.join([str(helpers), tm.env["PYTHONPATH"]])}

    # When: a burst pool runs it
    started = time.monotonic()
    proc = tm(
        "workers", "start", "--burst", "--runtime", "tm_broken_runtime:factory",
        env=env, timeout_s=60,
    )  # fmt: skip

    # Then: it gives up once the workers crash-loop, with one error line and exit 1
    assert proc.returncode == 1, proc.stderr
    assert time.monotonic() - started < 30
    assert proc.stderr.splitlines()[-1].startswith("tm: error: --burst: the workers kept dying")
    assert "burst stopped: workers are crash-looping" in proc.stdout
    assert tm.json("queue", "stats", "--json")["pending"] == 1  # the task is still there


# -- a read-only data directory ---------------------------------------------------------------------


def _read_only_bind_works() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    with tempfile.TemporaryDirectory() as root:
        probe = ["unshare", "-m", "sh", "-c", READ_ONLY_BIND, root, "touch", f"{root}/x"]
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            done = subprocess.run(probe, capture_output=True, timeout=10, check=False)
            return b"Read-only file system" in done.stderr and not Path(root, "x").exists()
    return False


@pytest.fixture
def read_only_root(shared_tmp: Path, tm: Tm, nobody_works: bool) -> tuple[Path, Sequence[str]]:
    """A data root holding a pending task and a daemon state dir, and the command prefix under
    which ``tm`` sees it read-only."""
    root = shared_tmp / "data"
    flow = shared_tmp / "echo.json"
    flow.write_text(json.dumps(ECHO_FLOW))
    tm.env["TM_DATA_DIR"] = str(root)
    tm.json("enqueue", flow, "--json")
    (root / "state" / "tmp").mkdir(parents=True)
    if _read_only_bind_works():
        return root, ["unshare", "-m", "sh", "-c", READ_ONLY_BIND, str(root)]
    if nobody_works:
        for path in [root, *root.rglob("*")]:
            path.chmod(0o555 if path.is_dir() else 0o444)
        return root, NOBODY
    pytest.skip("needs root for a read-only bind mount (unshare -m) or setpriv to another uid")


@pytest.mark.parametrize(
    "args",
    [
        ["daemon", "start", "--workers", "1"],
        ["daemon", "start", "--workers", "1", "--foreground"],
        ["workers", "start", "--burst"],
    ],
    ids=" ".join,
)
def test_a_read_only_data_dir_is_one_line_exit_1(
    tm: Tm, read_only_root: tuple[Path, Sequence[str]], args: list[str]
) -> None:
    root, prefix = read_only_root
    before = files_under(root)

    proc = subprocess.run(
        [*prefix, *tm.command(args)],
        env={**tm.env, **DAEMON_ON},
        cwd=tm.cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    [line] = proc.stderr.splitlines()
    assert line.startswith(f"tm: error: {root}") and "not writable" in line, line
    assert "worker spawned" not in proc.stdout
    assert files_under(root) == before
