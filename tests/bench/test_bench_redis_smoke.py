"""Smoke test of the Redis figure: ``python -m bench --only redis --quick`` runs end to end
against a real redis-server and RQ (installed into bench/.venv-rq on first use) and writes its
rows with numbers. Not timed: the numbers are not checked against goals here."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HARNESS_TIMEOUT_S = 300


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes", "on"}


@pytest.mark.slow
@pytest.mark.timeout(HARNESS_TIMEOUT_S + 30)
def test_the_redis_figure_runs_against_rq_and_writes_numbers(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        if in_ci():
            pytest.fail("redis-server is not installed")
        pytest.skip("redis-server is not installed")
    # When the figure runs on tiny sizes
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--only",
            "redis",
            "--quick",
            "--results-dir",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=HARNESS_TIMEOUT_S,
        check=False,
    )
    (results,) = tmp_path.glob("*.json")
    figure = json.loads(results.read_text())["figures"]["redis"]
    if figure["status"] == "error" and "CompetitorUnavailable" in figure["note"] and not in_ci():
        pytest.skip(f"RQ cannot be installed here: {figure['note']}")
    # Then it ran, with a rate on both sides where RQ has a counterpart
    assert done.returncode == 0, done.stderr[-3000:]
    assert figure["status"] == "ok", figure["note"]
    rows = {row["label"]: row for row in figure["rows"]}
    assert len(rows) == 6
    for row in rows.values():
        assert isinstance(row["ours"], float) and math.isfinite(row["ours"]) and row["ours"] > 0
    paired = [row for row in rows.values() if row["anchor"] is not None]
    assert len(paired) == 5 and all(row["ratio"] > 0 for row in paired)
    daemons = [row for label, row in rows.items() if "2 daemons x 2 workers" in label]
    assert len(daemons) == 1 and daemons[0]["goal"] is not None
    assert figure["params"]["rq"] != "unknown"
