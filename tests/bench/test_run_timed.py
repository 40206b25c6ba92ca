"""The harness's timed run (``bench.env.run_timed``, which waits in ``waitpid`` with a watchdog
thread for its timeout): a child that outlives its timeout is killed with its descendants and
reported as such."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tm_testing import run_in_repo

SLEEPER = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print(child.pid, flush=True)
time.sleep(60)
"""

DRIVER = """
import json, os, sys, time
from bench.core import BenchError
from bench.env import run_timed
started = time.monotonic()
try:
    run_timed([sys.executable, "-c", sys.argv[1]], env=os.environ, timeout_s=0.5,
              stdout_path=sys.argv[2])
    error = None
except BenchError as exc:
    error = str(exc)
print(json.dumps({"error": error, "seconds": time.monotonic() - started}))
"""


def test_a_child_that_outlives_its_timeout_is_killed_with_its_descendants(tmp_path: Path) -> None:
    # Given a child that starts a grandchild and both sleep for a minute, timed out at 0.5 s
    out = tmp_path / "out"
    done = run_in_repo(DRIVER, SLEEPER, str(out))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)

    # Then the run is reported as timed out, once the child is gone (not after its minute)
    assert result["error"] is not None and "did not finish in 0.5 s" in result["error"]
    assert result["seconds"] < 30
    # And the grandchild was killed too
    grandchild = int(out.read_text().split()[0])
    deadline_s = time.monotonic() + 5
    while _alive(grandchild) and time.monotonic() < deadline_s:
        time.sleep(0.05)
    assert not _alive(grandchild)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, killed and not yet reaped by its new parent, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
