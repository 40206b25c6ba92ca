"""Fixtures of the backend contract suite: every test runs once per entry of
``backend_testing.BACKEND_FACTORIES``, through the :class:`~tracemind.backend.protocol.Backend`
contract only."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from backend_testing import BACKEND_FACTORIES, open_or_skip
from tm_testing import ECHO_FLOW, FakeClock
from tracemind.backend.protocol import Backend
from tracemind.flows import FlowSnapshot, load_flow
from tracemind.queue.protocol import Failure, Lease

LEASE_S = 30.0


@dataclass
class Subject:
    """One backend under test: ``backend`` on ``clock``, and ``reopen`` for another view of
    the same storage (what another process, or another thread, opens)."""

    name: str
    tmp_path: Path
    clock: FakeClock
    backend: Backend
    snapshot: FlowSnapshot
    flow_path: Path
    opened: list[Backend] = field(default_factory=list)

    def reopen(self) -> Backend:
        other = open_or_skip(self.name, self.tmp_path, self.clock)
        self.opened.append(other)
        return other

    def submit(self, key: str | None = None, inputs: dict[str, object] | None = None) -> str:
        """One task submitted through the contract; its id."""
        result = self.backend.submitter(3600.0).submit(
            self.snapshot, inputs or {}, idempotency_key=key
        )
        return result.task_id

    def lease(self, task_id: str) -> Lease:
        """Lease ``task_id`` (the oldest due task must be it)."""
        lease = self.backend.queue.lease("c1", LEASE_S)
        assert lease is not None and lease.task_id == task_id, lease
        return lease

    def succeed(self, key: str | None = None) -> str:
        task_id = self.submit(key)
        self.backend.queue.ack(self.lease(task_id), {"ok": True})
        self.backend.queue.flush()
        return task_id

    def kill(self, key: str | None = None) -> str:
        """A task in the dead-letter queue (its attempt failed for good)."""
        task_id = self.submit(key)
        self.backend.queue.dead_letter(self.lease(task_id), Failure("boom", "Traceback: boom"))
        return task_id


@pytest.fixture(params=sorted(BACKEND_FACTORIES))
def subject(request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock) -> Iterator[Subject]:
    flow_path = tmp_path / "flows" / "echo.json"
    flow_path.parent.mkdir(exist_ok=True)
    flow_path.write_text(json.dumps(ECHO_FLOW))
    backend = open_or_skip(request.param, tmp_path, clock)
    subject = Subject(request.param, tmp_path, clock, backend, load_flow(flow_path), flow_path)
    subject.opened.append(backend)
    try:
        yield subject
    finally:
        for opened in subject.opened:
            opened.close()


@pytest.fixture
def backend(subject: Subject) -> Backend:
    return subject.backend
