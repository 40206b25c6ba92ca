"""Shared fixtures: a temporary data root, a fake clock, queues parametrized over backends
(``backend_testing.BACKEND_FACTORIES``), flow files, helper modules for worker subprocesses, and
``tm`` run as a real, time-bounded subprocess.

The helpers these fixtures build on (and that tests import) are in ``tm_testing.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from backend_testing import BACKEND_FACTORIES, open_or_skip
from redis_server import RedisServer, SharedServer, require_redis_server
from tm_testing import (
    CONSUMER_SOURCE,
    ECHO_FLOW,
    HOOKS_SOURCE,
    NOBODY,
    PRODUCER_SOURCE,
    FakeClock,
    FlowFiles,
    Processes,
    QueueHarness,
    Tm,
    packs_made_ahead,
    tm_command,
)
from tracemind.backend.file.stores import Stores, open_stores
from tracemind.config import DataDirs
from tracemind.flows import FlowSnapshot, load_flow
from tracemind.queue.protocol import TaskQueue


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    """A data root that does not exist yet (so tests can assert that nothing was created)."""
    return tmp_path / "data"


@pytest.fixture(autouse=True)
def _packs_made_ahead_are_made_within_their_test() -> Iterator[None]:
    """A writer's next pack is made by a helper thread (``PackWriter``): wait for those a test
    started, so none creates files while the next test counts them."""
    yield
    packs_made_ahead()


@pytest.fixture
def dirs(data_root: Path) -> DataDirs:
    return DataDirs(data_root / "queue", data_root / "idempotency", data_root / "dlq")


@pytest.fixture
def logs() -> Iterator[list[dict[str, Any]]]:
    """Every structlog event logged in this process during the test."""
    with structlog.testing.capture_logs() as captured:
        yield captured


@pytest.fixture
def stores(dirs: DataDirs, clock: FakeClock, logs: list[dict[str, Any]]) -> Stores:
    """The file stores of ``dirs`` on the fake clock (not durable: unit tests need no fsync)."""
    return open_stores(dirs, durable=False, clock=clock)


@pytest.fixture
def echo_snapshot(tmp_path: Path) -> FlowSnapshot:
    path = tmp_path / "flows" / "echo.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(ECHO_FLOW))
    return load_flow(path)


@pytest.fixture
def flows(tmp_path: Path) -> FlowFiles:
    root = tmp_path / "flows"
    root.mkdir(exist_ok=True)
    return FlowFiles(root)


# -- queue backends (the contract suite runs against each) -------------------------------------


@pytest.fixture(params=sorted(BACKEND_FACTORIES))
def harness(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    clock: FakeClock,
    logs: list[dict[str, Any]],
) -> Iterator[QueueHarness]:
    """The task queue of each backend in ``backend_testing.BACKEND_FACTORIES`` (a new backend
    joins this suite and ``tests/backend`` with one line there)."""
    opened = [open_or_skip(request.param, tmp_path, clock)]

    def reopen() -> TaskQueue:
        opened.append(open_or_skip(request.param, tmp_path, clock))
        return opened[-1].queue

    try:
        yield QueueHarness(opened[0].queue, clock, reopen, opened[0].submitter)
    finally:
        for backend in opened:
            backend.close()


# -- Redis -------------------------------------------------------------------------------------


def pytest_sessionfinish() -> None:
    SharedServer.stop()  # (started by the first test that needed it)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The URL of a redis-server shared by the session (AOF, ``appendfsync always``); each
    user takes its own key prefix (``SharedServer.fresh_location``). Skips where redis-server
    is not installed, fails under CI."""
    require_redis_server()
    try:
        yield SharedServer.url()
    finally:
        SharedServer.stop()


@pytest.fixture
def redis_location(redis_url: str) -> str:
    """A ``redis://`` location with a key prefix no other test uses."""
    return SharedServer.fresh_location()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test alone (for tests that kill or reconfigure it); stopped by
    its PID afterwards."""
    server = RedisServer(tmp_path / "redis")
    try:
        yield server
    finally:
        server.stop()


# -- subprocesses ------------------------------------------------------------------------------


@pytest.fixture
def helpers_dir(tmp_path: Path) -> Path:
    """Hooks, a consumer loop and a producer that subprocesses import (on their PYTHONPATH)."""
    root = tmp_path / "helpers"
    root.mkdir(exist_ok=True)
    (root / "tm_test_hooks.py").write_text(textwrap.dedent(HOOKS_SOURCE))
    (root / "tm_test_consumer.py").write_text(textwrap.dedent(CONSUMER_SOURCE))
    (root / "tm_test_producer.py").write_text(textwrap.dedent(PRODUCER_SOURCE))
    return root


@pytest.fixture
def record_dir(tmp_path: Path) -> Path:
    """Where helper hooks and consumers record each execution (see ``read_records``)."""
    root = tmp_path / "records"
    root.mkdir(exist_ok=True)
    return root


@pytest.fixture
def tm_env(data_root: Path, helpers_dir: Path, record_dir: Path) -> dict[str, str]:
    """The environment of ``tm`` subprocesses: data under ``data_root``, durable queue on,
    daemon flag off, helper modules importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TM_")}
    env.update(
        TM_DATA_DIR=str(data_root),
        TM_FILE_QUEUE_V2="1",
        TM_TEST_RECORD_DIR=str(record_dir),
        XDG_CACHE_HOME=str(data_root.parent / "xdg-cache"),  # the flow cache, kept out of ~
        PYTHONPATH=os.pathsep.join(filter(None, [str(helpers_dir), env.get("PYTHONPATH")])),
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.fixture
def processes() -> Iterator[Processes]:
    tracker = Processes()
    try:
        yield tracker
    finally:
        tracker.stop_all()


@pytest.fixture
def tm(tm_env: dict[str, str], tmp_path: Path, processes: Processes) -> Tm:
    return Tm(tm_env, tmp_path, processes)


@pytest.fixture(scope="session")
def nobody_works() -> bool:
    """Whether ``tm`` can run as uid 65534 here (setpriv present, venv and sources readable)."""
    if shutil.which("setpriv") is None or os.geteuid() != 0:
        return False
    probe = subprocess.run(
        [*NOBODY, *tm_command(), "--version"], capture_output=True, timeout=30, check=False
    )
    return probe.returncode == 0


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A temporary directory that another uid can traverse (pytest's tmp_path is 0700)."""
    root = Path(tempfile.mkdtemp(prefix="tm-shared-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        for path in [root, *root.rglob("*")]:
            with contextlib.suppress(OSError):
                path.chmod(0o755 if path.is_dir() else 0o644)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def nobodys_data(shared_tmp: Path, nobody_works: bool) -> Path:
    """A data directory (in :func:`shared_tmp`) that a process of uid 65534 may write; skips
    the test where such a process cannot run here."""
    if not nobody_works:
        pytest.skip("cannot run as uid 65534 here")
    data = shared_tmp / "data"
    data.mkdir(mode=0o777)
    data.chmod(0o777)  # (whatever the umask)
    return data
