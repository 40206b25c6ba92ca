"""The table (Markdown, so docs/benchmarks.md can hold it as printed) and the JSON results."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.core import TIMES, FigureResult, Row

HEADER = ("figure", "ours", "anchor", "ratio", "goal", "met?")


def _number(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit in ("tasks/s", "ops/s") or abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text} {unit}".replace(" %", "%")


def _cells(number: int, row: Row) -> tuple[str, ...]:
    anchor = _number(row.anchor, row.unit)
    if row.anchor is not None and row.anchor_label:
        anchor += f" ({row.anchor_label})"
    ratio = "—" if row.ratio is None else f"{row.ratio:.2f}{TIMES}"
    met = {True: "yes", False: "**no**", None: "—"}[row.met]
    label = f"{number}. {row.label}"
    return label, _number(row.ours, row.unit), anchor, ratio, str(row.goal or "—"), met


def table(figures: Sequence[FigureResult]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for fig in figures:
        if fig.status != "ok":
            lines.append(f"| {fig.number}. {fig.title} | {fig.note or fig.status} | | | | |")
            continue
        for row in fig.rows:
            lines.append("| " + " | ".join(_cells(fig.number, row)) + " |")
    return "\n".join(lines)


def machine(scratch: Path) -> dict[str, Any]:
    """Cores, Python, kernel, and the file system type the scratch data lives on."""
    df = subprocess.run(
        ["df", "-T", str(scratch)], capture_output=True, text=True, check=False
    ).stdout.splitlines()
    fs = df[-1].split()[1] if len(df) > 1 else "unknown"
    return {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "scratch_fs": fs,
    }


def source_revision(repo: Path) -> dict[str, Any]:
    """The commit measured, and whether the working tree had changes (read-only git calls)."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, check=False
        )
        return done.stdout.strip() if done.returncode == 0 else ""

    status = git("status", "--porcelain", "--untracked-files=no", "--", "src")
    return {"commit": git("rev-parse", "--short", "HEAD") or None, "src_modified": bool(status)}


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    tmp.rename(path)
