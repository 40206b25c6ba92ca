"""Smoke test of the benchmark harness: ``python -m bench --quick`` runs end to end on tiny sizes
and writes a JSON results file with every figure and numeric values. Not a timed test: the
numbers are not checked against goals here (docs/benchmarks.md holds a real run)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
FIGURES = {"cold_start", "enqueue", "disk", "drain", "pickup", "idle", "status"}
EXIT_NO_COMPETITOR = 75  # bench.env.EXIT_NO_COMPETITOR
HARNESS_TIMEOUT_S = 240


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes", "on"}


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@pytest.mark.slow
@pytest.mark.timeout(HARNESS_TIMEOUT_S + 30)
def test_quick_run_writes_every_figure_with_numbers(tmp_path: Path) -> None:
    # Given: the harness, with results going to a temporary directory
    results_dir = tmp_path / "results"
    # When: it runs every figure on tiny sizes
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--results-dir", str(results_dir)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=HARNESS_TIMEOUT_S,
        check=False,
    )
    if done.returncode == EXIT_NO_COMPETITOR and not in_ci():
        pytest.skip("Huey cannot be installed here (no package index?); CI must have one")
    assert done.returncode == 0, done.stderr[-3000:]

    # Then: one JSON file holds every figure, each with numeric values (or a skip with a note)
    files = list(results_dir.glob("*.json"))
    assert len(files) == 1, files
    data = json.loads(files[0].read_text())
    assert set(data["figures"]) == FIGURES
    assert data["machine"]["cores"] >= 1 and data["versions"]["huey"] != "unknown"
    for name, figure in data["figures"].items():
        if figure["status"] == "skipped":
            assert name == "status" and figure["note"], f"{name} was skipped without reason"
            continue
        assert figure["status"] == "ok", f"{name}: {figure['note']}"
        assert figure["values"], f"{name} has no values"
        bad = {k: v for k, v in figure["values"].items() if not is_number(v)}
        assert not bad, f"{name} has non-numeric values: {bad}"
        assert figure["rows"], f"{name} has no table rows"
        for row in figure["rows"]:
            assert is_number(row["ours"]) or is_number(row["anchor"]), f"{name}: {row}"
            if is_number(row["ours"]) and is_number(row["anchor"]) and row["anchor"] != 0:
                assert is_number(row["ratio"]), f"{name}: {row}"
            if row["goal"] is not None:
                assert isinstance(row["met"], bool), f"{name}: {row}"
    # And the table was printed
    assert "| figure | ours | anchor | ratio | goal | met? |" in done.stdout
