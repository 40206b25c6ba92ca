"""Backends under test: the factories every contract suite runs against, and what a test may see
of a backend's storage beyond the contract.

A new backend joins the suites (``tests/backend`` and ``tests/queue/test_queue_contract.py``)
with one line in :data:`BACKEND_FACTORIES`. A factory opens a backend on the storage that
``tmp_path`` names (calling it again with the same ``tmp_path`` opens another view of the same
storage: what another process would open) on the given fake clock, with an empty environment
(the default retention policy). A factory whose server is not reachable raises
:class:`BackendUnavailable`: the test is skipped, or fails when the backend's name is listed in
``TM_TEST_REQUIRE_BACKENDS`` (comma-separated; CI sets it where the server runs).

Two optional hooks per location scheme let the backend-neutral tests look below the contract:
:data:`RAW_STATES` (everything stored, to prove that readers write nothing) and :data:`DAMAGE`
(corrupt one stored task record, or add an entry no writer made). Without them those tests
check what the contract shows, or skip.

Run as a module, this is a submitter process for the multi-process tests:
``python -m backend_testing LOCATION FLOW_PATH GO_FILE KEY...`` waits for GO_FILE, submits one
task per key (in the order given, one call each) and prints ``{key: [task_id, duplicate]}``.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tm_testing import FakeClock
from tracemind.backend import Location, open_backend
from tracemind.backend.protocol import Backend

BackendFactory = Callable[[Path, FakeClock], Backend]
REQUIRE_ENV = "TM_TEST_REQUIRE_BACKENDS"


class BackendUnavailable(Exception):
    """The backend's server is not reachable from this test run."""


def _file_backend(tmp_path: Path, clock: FakeClock, *, durable: bool) -> Backend:
    location = Location.for_root(str(tmp_path / "data"))
    return open_backend(location, durable=durable, env={}, clock=clock)


BACKEND_FACTORIES: dict[str, BackendFactory] = {
    "file": functools.partial(_file_backend, durable=False),
    "file-durable": functools.partial(_file_backend, durable=True),
}
"""Backend name → factory (see the module docstring); a new backend adds one entry."""


def open_or_skip(name: str, tmp_path: Path, clock: FakeClock) -> Backend:
    """``BACKEND_FACTORIES[name](tmp_path, clock)``; skips the test when the backend's server is
    missing, unless ``TM_TEST_REQUIRE_BACKENDS`` requires it (then the test fails)."""
    try:
        return BACKEND_FACTORIES[name](tmp_path, clock)
    except BackendUnavailable as exc:
        required = {n.strip() for n in os.environ.get(REQUIRE_ENV, "").split(",")}
        if name in required:
            pytest.fail(f"backend {name} is required here but unavailable: {exc}")
        pytest.skip(f"backend {name} unavailable: {exc}")


# -- below the contract: raw state and damage, per location scheme -----------------------------


def _file_tree(backend: Backend) -> dict[str, tuple[int, ...]]:
    """Every entry under the three directories with what a write would change."""
    state: dict[str, tuple[int, ...]] = {}
    for directory in backend.location.file_dirs():
        for path in (
            [Path(directory), *Path(directory).rglob("*")] if os.path.lexists(directory) else []
        ):
            info = path.lstat()
            state[str(path)] = (
                info.st_ino,
                info.st_mode,
                info.st_size,
                info.st_mtime_ns,
                info.st_ctime_ns,
            )
    return state


def _file_damage_record(backend: Backend, task_id: str) -> None:
    """Overwrite the waiting task's file with a torn record."""
    queue: Any = backend.queue
    [name] = [name for name in queue.waiting.entries() if name.task_id == task_id]
    Path(queue.waiting.path_of(name)).write_bytes(b'{"v":1,"task_id":"01')


def _file_add_unknown(backend: Backend) -> None:
    """A file no writer made, where waiting tasks live."""
    queue: Any = backend.queue
    queue.prepare()
    (Path(queue.pending_dir) / "notes.txt").write_text("hello")


RAW_STATES: dict[str, Callable[[Backend], object]] = {"file": _file_tree}
"""Location scheme → everything the backend stores, comparable with ``==``."""
DAMAGE: dict[str, dict[str, Callable[..., None]]] = {
    "file": {"record": _file_damage_record, "unknown": _file_add_unknown},
}
"""Location scheme → ``record(backend, task_id)`` (corrupt a waiting task's stored record in
place) and ``unknown(backend)`` (store an entry no writer made beside the waiting tasks)."""


# -- a submitter process -----------------------------------------------------------------------


def submitter_command(
    location: Location, flow_path: Path, go_file: Path, keys: list[str]
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "backend_testing",
        str(location),
        str(flow_path),
        str(go_file),
        *keys,
    ]


def submitter_env() -> dict[str, str]:
    """The environment of a submitter process: this one, with the tests directory importable."""
    here = str(Path(__file__).resolve().parent)
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")])),
    }


def _submit_main(argv: list[str]) -> int:
    from tracemind.flows import load_flow

    location, flow_path, go_file, *keys = argv
    backend = open_backend(location, durable=False, env={})
    snapshot = load_flow(Path(flow_path))
    deadline_s = time.monotonic() + 30
    while not os.path.exists(go_file):
        if time.monotonic() > deadline_s:
            return 3
        time.sleep(0.001)
    submitter = backend.submitter(3600.0)
    results = {}
    for key in keys:
        result = submitter.submit(snapshot, {"key": key}, idempotency_key=key)
        results[key] = [result.task_id, result.duplicate]
    backend.close()
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(_submit_main(sys.argv[1:]))
