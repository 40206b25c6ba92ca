"""Reading ``tm``'s JSON log lines: when each task started and finished (wall clock)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


def parse_line(line: str | bytes) -> dict[str, Any] | None:
    """One log line as a dict, or None for anything that is not a JSON object."""
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


def epoch_s(event: dict[str, Any]) -> float:
    """The event's ISO-8601 ``timestamp`` as epoch seconds."""
    return datetime.fromisoformat(str(event["timestamp"])).timestamp()


@dataclass
class TaskTimes:
    started_s: dict[str, float] = field(default_factory=dict)
    succeeded_s: dict[str, float] = field(default_factory=dict)
    committed_s: list[float] = field(default_factory=list)
    """When each group of durable acks was committed (``acks committed``, no task id)."""

    @property
    def last_done_s(self) -> float:
        """When the last success became durable: the last commit, or the last success when acks
        were not committed in groups (no durable queue)."""
        return max([*self.succeeded_s.values(), *self.committed_s])

    @classmethod
    def from_lines(cls, lines: Iterable[str | bytes]) -> TaskTimes:
        times = cls()
        for line in lines:
            event = parse_line(line)
            if event is not None and event.get("event") == "acks committed":
                times.committed_s.append(epoch_s(event))
            if event is None or "task_id" not in event:
                continue
            if event.get("event") == "task started":
                times.started_s.setdefault(event["task_id"], epoch_s(event))
            elif event.get("event") == "task succeeded":
                times.succeeded_s[event["task_id"]] = epoch_s(event)
        return times
