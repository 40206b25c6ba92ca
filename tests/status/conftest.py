"""Fixtures for the status tests: daemons with a status server, and work to give them."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
from dashboard_harness import StatusDaemon, Work

from tm_testing import FlowFiles, Tm
from tracemind.client import Client


@pytest.fixture
def status_daemon(tm: Tm, tmp_path: Path) -> Iterator[Callable[..., StatusDaemon]]:
    """Makes (not starts) daemons with a status server; every one is stopped at teardown."""
    made: list[StatusDaemon] = []

    def make(env: Mapping[str, str] | None = None) -> StatusDaemon:
        daemon = StatusDaemon(tm, tmp_path / f"daemon-{len(made)}", env)
        daemon.log.parent.mkdir()
        made.append(daemon)
        return daemon

    try:
        yield make
    finally:
        for daemon in made:
            daemon.stop()


@pytest.fixture
def work(tm_env: dict[str, str], data_root: Path, helpers_dir: Path, flows: FlowFiles) -> Work:
    return Work(Client(data_root, app_dirs=[helpers_dir], env=tm_env), flows)
