"""The README's host block, run as written (bash, `set -eu`) against the container: what a new
user types after `docker compose up -d --wait` must work the first time."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import Project

pytestmark = [pytest.mark.container]

MARKER = "<!-- tests/container/test_container_readme.py runs this block"


def readme_host_block(readme: Path) -> str:
    """The fenced bash block right after the marker comment in the README."""
    text = readme.read_text(encoding="utf-8")
    assert MARKER in text, "the README lost the marker of its host block"
    after = text[text.index(MARKER) :]
    match = re.search(r"```bash\n(.*?)```", after, flags=re.DOTALL)
    assert match is not None
    return match.group(1)


@pytest.mark.timeout(120)
def test_the_readme_host_block_works_as_written(stack: Project, tmp_path: Path) -> None:
    # Given a directory laid out like the checkout the README speaks of: data/ is the bind-mounted
    # data dir of the running stack, app/ the bundled app; `tm` is this venv's, on PATH; no TM_*
    # variable is set beforehand.
    (tmp_path / "data").symlink_to(stack.data_dir)
    (tmp_path / "app").symlink_to(stack.repo / "app")
    block = readme_host_block(stack.repo / "README.md")
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("TM_", "COMPOSE_", "PYTHONPATH"))
    }
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"

    # When it runs, line by line as a user would, stopping at the first failing command
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )

    # Then every command succeeded: the task ran in the container...
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert '"status": "succeeded"' in out or "succeeded" in out, out
    assert "Hello, host!" in out, out
    # ... ps saw the container's daemon and named the status URL reachable from here (the
    # published port, not the container's own 8080)...
    assert "daemon: running" in out, out
    assert f"status: http://127.0.0.1:{stack.port}" in out, out
    # ... and the stop drained it: the container exited cleanly, and stays stopped.
    assert "daemon stopped" in out, out
    assert stack.wait_exited(timeout_s=30)["ExitCode"] == 0
    assert result.stderr == "", result.stderr
