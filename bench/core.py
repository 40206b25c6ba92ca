"""The result model shared by every figure: rows of the table, goals, and small statistics."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

TIMES = "\u00d7"  # the multiplication sign, as in a ratio of "2.5 times"


class BenchError(Exception):
    """A benchmark could not run (a command failed, a process did not finish in time)."""


@dataclass(frozen=True)
class Goal:
    """What a row must reach: ``ratio >= value``, ``ratio <= value``, ``ours < value``, …"""

    subject: str  # "ratio" or "ours"
    op: str  # one of "<", "<=", ">="
    value: float
    unit: str = ""

    def met(self, ours: float | None, ratio: float | None) -> bool | None:
        subject = ratio if self.subject == "ratio" else ours
        if subject is None or not math.isfinite(subject):
            return None
        if self.op == "<":
            return subject < self.value
        if self.op == "<=":
            return subject <= self.value
        return subject >= self.value

    def __str__(self) -> str:
        op = {"<": "<", "<=": "≤", ">=": "≥"}[self.op]
        if self.subject == "ratio":
            return f"{op} {self.value:g}{TIMES}"
        return f"{op} {self.value:,g}{self.unit}"


@dataclass
class Row:
    """One line of the table. ``ratio`` is ours ÷ anchor (for rates higher is better, for times
    lower is better: the goal says which)."""

    label: str
    unit: str
    ours: float | None
    anchor: float | None = None
    anchor_label: str = ""
    goal: Goal | None = None
    note: str = ""
    paired_ratio: float | None = None
    """Median of the per-round ratios, when both sides were measured in the same rounds: on a
    shared machine a disturbed round then moves both sides of its own ratio, not one median."""

    @property
    def ratio(self) -> float | None:
        if self.paired_ratio is not None:
            return self.paired_ratio
        if self.ours is None or not self.anchor:
            return None
        return self.ours / self.anchor

    @property
    def met(self) -> bool | None:
        return None if self.goal is None else self.goal.met(self.ours, self.ratio)

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "unit": self.unit,
            "ours": self.ours,
            "anchor": self.anchor,
            "anchor_label": self.anchor_label,
            "ratio": self.ratio,
            "ratio_method": "median of per-round ratios"
            if self.paired_ratio is not None
            else "ratio of medians",
            "goal": str(self.goal) if self.goal else None,
            "met": self.met,
            "note": self.note,
        }


@dataclass
class FigureResult:
    """A figure's outcome: its rows, its named numeric values (medians etc.) and raw samples."""

    number: int
    name: str
    title: str
    status: str = "ok"  # "ok", "skipped" or "error"
    rows: list[Row] = field(default_factory=list)
    values: dict[str, float] = field(default_factory=dict)
    samples: dict[str, list[float]] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["rows"] = [row.to_dict() for row in self.rows]
        return data


def median(samples: Sequence[float]) -> float:
    if not samples:
        raise BenchError("no samples")
    return float(statistics.median(samples))


def percentile(samples: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (p99 of 200 samples is the 198th smallest)."""
    if not samples:
        raise BenchError("no samples")
    ordered = sorted(samples)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return float(ordered[rank - 1])


def paired_ratio(ours: Sequence[float], anchor: Sequence[float]) -> float:
    """Median over rounds of ours ÷ anchor (both lists in round order)."""
    if len(ours) != len(anchor) or not ours:
        raise BenchError("paired samples must have the same, non-zero length")
    return median([o / a for o, a in zip(ours, anchor, strict=True)])
