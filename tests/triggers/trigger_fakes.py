"""Test doubles for the trigger tests (imported by name: tests/ has no packages)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tracemind.errors import QueueError


@dataclass(frozen=True)
class FakeResult:
    task_id: str
    duplicate: bool


@dataclass(frozen=True)
class Call:
    flow: Any
    inputs: dict[str, Any]
    key: str | None
    trigger: dict[str, Any] | None


class FakeSubmitter:
    """An in-memory Submitter that deduplicates by idempotency key, like the real one."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.by_key: dict[str, str] = {}
        self.failing = False
        self._lock = threading.Lock()
        self.submitted = threading.Event()

    def submit(
        self,
        flow: Any,
        inputs: dict[str, Any],
        *,
        idempotency_key: str | None = None,
        trigger: dict[str, Any] | None = None,
    ) -> FakeResult:
        with self._lock:
            if self.failing:
                raise QueueError("queue directory is not writable")
            if idempotency_key is not None and idempotency_key in self.by_key:
                return FakeResult(self.by_key[idempotency_key], True)
            task_id = f"task-{len(self.calls) + 1}"
            self.calls.append(Call(flow, inputs, idempotency_key, trigger))
            if idempotency_key is not None:
                self.by_key[idempotency_key] = task_id
            self.submitted.set()
            return FakeResult(task_id, False)


def fake_flow_loader(path: Path) -> dict[str, str]:
    return {"loaded": path.name}
