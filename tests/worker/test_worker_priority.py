"""Workers run their steps at a lower CPU priority than the daemon (``TM_WORKER_NICE``), so that
steps which keep every core busy never starve the heartbeat or the probes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tm_testing import ECHO_FLOW, Tm

RUNTIME = """\
import os

def factory():
    with open(os.environ["TM_TEST_NICE_FILE"], "a") as out:
        out.write(f"{os.getpriority(os.PRIO_PROCESS, 0)}\\n")
    raise RuntimeError("priority recorded")
"""


def _worker_niceness(tm: Tm, tmp_path: Path, extra_env: dict[str, str]) -> set[int]:
    """The niceness every worker of a burst pool started with (its runtime records it)."""
    helpers = tmp_path / "helpers"
    helpers.mkdir(exist_ok=True)
    (helpers / "tm_nice_runtime.py").write_text(RUNTIME)
    flow = tmp_path / "echo.json"
    flow.write_text(json.dumps(ECHO_FLOW))
    tm.json("enqueue", flow, "--json")
    record = tmp_path / f"nice-{len(extra_env)}-{extra_env.get('TM_WORKER_NICE', '')}.txt"
    env = {
        "PYTHONPATH": os.pathsep.join([str(helpers), tm.env["PYTHONPATH"]]),
        "TM_TEST_NICE_FILE": str(record),
        **extra_env,
    }
    proc = tm("workers", "start", "-n", "1", "--burst", "--runtime", "tm_nice_runtime:factory",
              env=env, timeout_s=60)  # fmt: skip
    assert proc.returncode == 1, proc.stderr  # (the runtime never starts: the run ends)
    return {int(line) for line in record.read_text().split()}


def test_workers_run_five_steps_nicer_than_their_pool_by_default(tm: Tm, tmp_path: Path) -> None:
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    assert _worker_niceness(tm, tmp_path, {}) == {min(ours + 5, 19)}


def test_tm_worker_nice_zero_keeps_the_pools_priority(tm: Tm, tmp_path: Path) -> None:
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    assert _worker_niceness(tm, tmp_path, {"TM_WORKER_NICE": "0"}) == {ours}


@pytest.mark.parametrize("value", ["-1", "20", "five", "1.5"])
def test_a_bad_tm_worker_nice_is_one_line_exit_2(tm: Tm, value: str) -> None:
    proc = tm("workers", "start", "--burst", env={"TM_WORKER_NICE": value}, timeout_s=30)
    assert proc.returncode == 2, proc.stderr
    [line] = proc.stderr.splitlines()
    assert "TM_WORKER_NICE" in line and "Traceback" not in proc.stderr
