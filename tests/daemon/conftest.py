"""Fixtures for the daemon tests (the harness itself is in daemon_harness.py)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_harness import HELPERS_MODULE, HELPERS_SOURCE, DaemonEnv, base_env


@pytest.fixture
def daemon_env(tmp_path: Path) -> Iterator[DaemonEnv]:
    helpers = tmp_path / "helpers"
    helpers.mkdir()
    (helpers / f"{HELPERS_MODULE}.py").write_text(textwrap.dedent(HELPERS_SOURCE))
    marks = tmp_path / "marks"
    executions = tmp_path / "executions"
    marks.mkdir()
    executions.mkdir()
    env = base_env(tmp_path)
    env.update(
        TM_ENABLE_DAEMON="1",
        TM_FILE_QUEUE_V2="1",
        TM_DATA_DIR=str(tmp_path / "data"),
        TM_TEST_MARKS=str(marks),
        TM_TEST_EXEC_DIR=str(executions),
    )
    harness = DaemonEnv(
        root=tmp_path,
        env=env,
        data_dir=tmp_path / "data",
        state_dir=tmp_path / "state",
        marks_dir=marks,
        exec_dir=executions,
    )
    try:
        yield harness
    finally:
        harness.cleanup()


@pytest.fixture(scope="session")
def pid_namespaces() -> bool:
    """Whether ``unshare --pid --fork --mount-proc`` works here (root on Linux)."""
    if os.geteuid() != 0:
        return False
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        probe = subprocess.run(
            ["unshare", "--pid", "--fork", "--mount-proc", "true"],
            capture_output=True,
            timeout=10,
            check=False,
        )
        return probe.returncode == 0
    return False
