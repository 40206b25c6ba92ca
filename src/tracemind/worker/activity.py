"""What a pool's workers did lately, kept in the pool's memory for the dashboard: attempts that
succeeded and failed per minute over the last hour, the last failures, and what each busy worker
runs now.

Contract: memory only — a restart starts empty (``since`` says from when). Nothing here holds a
task's input or result: ids, flow ids, step ids, attempt numbers, times, and the first line of
an error cut at :data:`ERROR_LINE_MAX_CHARS` characters. Times passed in are wall-clock epoch
seconds (the caller's clock), so tests need no clock patching. Not thread-safe: the pool's
supervision loop is its only writer.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from tracemind.clock import iso_utc

MINUTE_S = 60
WINDOW_MINUTES = 60
"""The per-minute counts cover this many minutes, the current one last."""
RECENT_FAILURES = 50
ERROR_LINE_MAX_CHARS = 200
ID_MAX_CHARS = 200
"""Flow and step ids are the user's; a longer one is cut (the registry entry stays small)."""
RUNNING_LISTED_MAX = 64
"""Busy workers a pool lists in its registry entry."""
FAILED_OUTCOMES = frozenset({"retrying", "dead-lettered", "worker-died"})
"""Outcomes counted as failed attempts (``cancelled`` is neither a success nor a failure)."""


def error_line(text: object, limit: int = ERROR_LINE_MAX_CHARS) -> str | None:
    """The first non-blank line of ``text``, at most ``limit`` characters (the last one ``…``
    when it was cut); None when there is no text."""
    if not isinstance(text, str):
        return None
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    if not line:
        return None
    return line if len(line) <= limit else line[: limit - 1] + "…"


def short_id(value: object) -> str | None:
    """A flow or step id as reported: a string cut at :data:`ID_MAX_CHARS`, else None."""
    return value[:ID_MAX_CHARS] if isinstance(value, str) else None


@dataclass
class RunningTask:
    """The task a busy worker runs: taken at ``started_s`` (epoch), now in step ``step``."""

    task_id: str
    flow_id: str | None
    attempt: int
    started_s: float
    step: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "flow_id": self.flow_id,
            "attempt": self.attempt,
            "step": self.step,
            "started_at_s": round(self.started_s, 3),
        }


class Activity:
    """Per-minute outcome counts (last hour) and the last :data:`RECENT_FAILURES` failures."""

    def __init__(self, since_s: float) -> None:
        self.since_s = since_s
        self._minutes: dict[int, list[int]] = {}  # minute number (epoch // 60) -> [ok, failed]
        self._failures: deque[dict[str, Any]] = deque(maxlen=RECENT_FAILURES)

    def record(
        self,
        outcome: str,
        at_s: float,
        *,
        task_id: str | None,
        flow_id: str | None,
        attempt: int,
        error: str | None = None,
    ) -> None:
        """Count one settled attempt; a failed one (:data:`FAILED_OUTCOMES`) is also kept."""
        if outcome == "succeeded":
            self._bucket(at_s)[0] += 1
        elif outcome in FAILED_OUTCOMES:
            self._bucket(at_s)[1] += 1
            self._failures.append(
                {
                    "task_id": task_id,
                    "flow_id": short_id(flow_id),
                    "attempt": attempt,
                    "outcome": outcome,
                    "at": iso_utc(at_s),
                    "error": error_line(error),
                }
            )

    def _bucket(self, at_s: float) -> list[int]:
        minute = int(at_s // MINUTE_S)
        bucket = self._minutes.get(minute)
        if bucket is None:  # a new minute: the ones that left the window go
            for old in [m for m in self._minutes if m <= minute - WINDOW_MINUTES]:
                del self._minutes[old]
            bucket = self._minutes[minute] = [0, 0]
        return bucket

    def to_dict(self, now_s: float) -> dict[str, Any]:
        """``since`` (when counting began), ``minute_s``, ``minutes`` (the start of each of the
        last :data:`WINDOW_MINUTES` minutes, oldest first, the current one last) with
        ``succeeded`` and ``failed`` counts in the same order, and ``recent_failures`` (newest
        first)."""
        last = int(now_s // MINUTE_S)
        numbers = range(last - WINDOW_MINUTES + 1, last + 1)
        return {
            "since": iso_utc(self.since_s),
            "minute_s": MINUTE_S,
            "minutes": [iso_utc(n * MINUTE_S) for n in numbers],
            "succeeded": [self._minutes.get(n, [0, 0])[0] for n in numbers],
            "failed": [self._minutes.get(n, [0, 0])[1] for n in numbers],
            "recent_failures": list(reversed(self._failures)),
        }


def empty_activity() -> dict[str, Any]:
    """What :meth:`Activity.to_dict` reports where no daemon keeps one (same keys)."""
    return {
        "since": None,
        "minute_s": MINUTE_S,
        "minutes": [],
        "succeeded": [],
        "failed": [],
        "recent_failures": [],
    }
