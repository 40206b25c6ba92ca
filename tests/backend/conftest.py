"""Fixtures of the backend contract suite: every test runs once per entry of
``backend_testing.BACKEND_FACTORIES``, through the :class:`~tracemind.backend.protocol.Backend`
contract only."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from backend_testing import BACKEND_FACTORIES, Subject, open_or_skip
from tm_testing import ECHO_FLOW, FakeClock
from tracemind.backend.protocol import Backend
from tracemind.flows import load_flow


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
