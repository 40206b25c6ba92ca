"""Backends under test: the factories every contract suite runs against, and what a test may see
of a backend's storage beyond the contract.

A new backend joins the suites (``tests/backend`` and ``tests/queue/test_queue_contract.py``)
with one line in :data:`BACKEND_FACTORIES`. A factory opens a backend on the storage that
``tmp_path`` names (calling it again with the same ``tmp_path`` opens another view of the same
storage: what another process would open) on the given fake clock, with an empty environment
(the default retention policy). A factory whose server is not reachable raises
:class:`BackendUnavailable`: the test is skipped, or fails when the backend's name is listed in
``TM_TEST_REQUIRE_BACKENDS`` (comma-separated; CI sets it where the server runs).

:class:`Subject` is what a test of ``tests/backend`` gets: one backend under test, with helpers
that put a task in a given state through the contract.

Two optional hooks per location scheme let the backend-neutral tests look below the contract:
:data:`RAW_STATES` (everything stored, to prove that readers write nothing) and :data:`DAMAGE`
(corrupt one stored task record, or add an entry no writer made). Without them those tests
check what the contract shows, or skip.

Run as a module (:func:`process_command`), this is the other process of the multi-process
tests: a submitter racing another, a process killed right after an enqueue or an ack, or a
reader running as another user.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tm_testing import FakeClock, damage_record, packs_made_ahead
from tracemind.backend import Location, open_backend
from tracemind.backend.protocol import Backend
from tracemind.flows import FlowSnapshot
from tracemind.queue.protocol import Failure, Lease

BackendFactory = Callable[[Path, FakeClock], Backend]
REQUIRE_ENV = "TM_TEST_REQUIRE_BACKENDS"


class BackendUnavailable(Exception):
    """The backend's server is not reachable from this test run."""


def _file_backend(tmp_path: Path, clock: FakeClock, *, durable: bool) -> Backend:
    location = Location.for_root(str(tmp_path / "data"))
    return open_backend(location, durable=durable, env={}, clock=clock)


def _redis_backend(tmp_path: Path, clock: FakeClock) -> Backend:
    """A key prefix named after ``tmp_path`` on the session's redis-server (``redis_server``)."""
    import hashlib
    import importlib.util
    import shutil

    from redis_server import SharedServer

    if importlib.util.find_spec("redis") is None or shutil.which("redis-server") is None:
        raise BackendUnavailable("redis-server or the redis client is not installed")
    prefix = "t" + hashlib.sha256(str(tmp_path).encode()).hexdigest()[:16]
    location = f"{SharedServer.url()}?prefix={prefix}"
    return open_backend(location, durable=True, env={}, clock=clock)


BACKEND_FACTORIES: dict[str, BackendFactory] = {
    "file": functools.partial(_file_backend, durable=False),
    "file-durable": functools.partial(_file_backend, durable=True),
    "redis": _redis_backend,
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


# -- one backend under test (the contract suite's ``subject`` fixture) ------------------------

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


# -- below the contract: raw state and damage, per location scheme -----------------------------


def _file_tree(backend: Backend) -> dict[str, tuple[int, ...]]:
    """Every entry under the three directories with what a write would change (once this
    process's packs made ahead are made)."""
    packs_made_ahead()
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
    damage_record(queue.waiting.path_of(name), task_id, b'{"v":1,"task_id":"01')


def _file_add_unknown(backend: Backend) -> None:
    """A file no writer made, where waiting tasks live."""
    queue: Any = backend.queue
    queue.prepare()
    (Path(queue.pending_dir) / "notes.txt").write_text("hello")


def _redis_keys(backend: Backend) -> dict[bytes, tuple[object, int]]:
    """Every key of the location's prefix: its value (a stream's serialized form, ``DUMP``,
    which includes its consumer groups and their pending entries) and its time to live."""
    connection: Any = backend.connection  # type: ignore[attr-defined]
    client = connection.client
    read = {
        b"hash": lambda key: sorted(client.hgetall(key).items()),
        b"zset": lambda key: client.zrange(key, 0, -1, withscores=True),
        b"string": client.get,
        b"set": lambda key: sorted(client.smembers(key)),
        b"list": lambda key: client.lrange(key, 0, -1),
    }
    state = {}
    for key in client.scan_iter(match=f"{connection.keys.prefix}:*", count=1000):
        kind = client.type(key)
        kind = kind.encode() if isinstance(kind, str) else kind
        state[key] = (read.get(kind, client.dump)(key), client.pttl(key))
    return state


def _redis_damage_record(backend: Backend, task_id: str) -> None:
    """Overwrite the waiting task's stored record with a torn one."""
    connection: Any = backend.connection  # type: ignore[attr-defined]
    connection.client.hset(connection.keys.task(task_id), "record", '{"v":1,"task_id":"01')


def _redis_add_unknown(backend: Backend) -> None:
    """Keys no writer made beside the tasks' own: a task-like hash of no task, and a stray
    string. (The queue's indexes — the due set, the stream — are its own, like the file
    backend's census: a member written there by hand is not damage it promises to survive.)"""
    connection: Any = backend.connection  # type: ignore[attr-defined]
    connection.client.hset(
        connection.keys.task("notes"), mapping={"record": "{}", "state": "pending"}
    )
    connection.client.set(f"{connection.keys.prefix}:notes.txt", "hello")


RAW_STATES: dict[str, Callable[[Backend], object]] = {"file": _file_tree, "redis": _redis_keys}
"""Location scheme → everything the backend stores, comparable with ``==``."""
DAMAGE: dict[str, dict[str, Callable[..., None]]] = {
    "file": {"record": _file_damage_record, "unknown": _file_add_unknown},
    "redis": {"record": _redis_damage_record, "unknown": _redis_add_unknown},
}
"""Location scheme → ``record(backend, task_id)`` (corrupt a waiting task's stored record in
place) and ``unknown(backend)`` (store an entry no writer made beside the waiting tasks)."""


# -- processes that use a backend -------------------------------------------------------------


def process_command(*args: object) -> list[str]:
    """``python -m backend_testing ARGS`` (see :func:`_main`)."""
    return [sys.executable, "-m", "backend_testing", *map(str, args)]


def process_env() -> dict[str, str]:
    """The environment of such a process: this one, with the tests directory importable."""
    here = str(Path(__file__).resolve().parent)
    path = os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


def _submit_keys(backend: Backend, flow_path: str, go_file: str, keys: list[str]) -> int:
    """Wait for ``go_file``, submit one task per key (one call each, in order) and print
    ``{key: [task_id, duplicate]}``."""
    from tracemind.flows import load_flow

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
    print(json.dumps(results), flush=True)
    return 0


def _die_after(backend: Backend, verb: str, flow_path: str) -> int:
    """Submit one task (``enqueue``), or lease and ack the oldest (``ack``), print its id and
    die by SIGKILL at once: no flush, no exit handler, no commit thread finishing."""
    import signal

    from tracemind.flows import load_flow

    if verb == "enqueue":
        task_id = backend.submitter(3600.0).submit(load_flow(Path(flow_path)), {}).task_id
    else:
        lease = backend.queue.lease("doomed", 30.0)
        if lease is None:
            return 3
        backend.queue.ack(lease, {"acked": True})
        task_id = lease.task_id
    os.write(1, task_id.encode() + b"\n")
    os.kill(os.getpid(), signal.SIGKILL)
    return 4  # (not reached)


def _read(backend: Backend, task_ids: list[str]) -> int:
    """Call every reader verb and print what they answered (as JSON)."""
    stats, dead, damaged_dead = backend.counts()
    answers = {
        "stats": stats.to_dict(),
        "dead": dead,
        "damaged_dead": damaged_dead,
        "has_waiting": backend.queue.has_waiting(),
        "found": [
            None if (info := backend.queue.find(t)) is None else str(info.status) for t in task_ids
        ],
        "dead_letters": [e["task_id"] for e in backend.dead_letters.newest_first()],
        "dead_count": backend.dead_letters.count(),
        "live": [e["instance_id"] for e in backend.registry.live()],
        "problems": backend.problems(),
    }
    print(json.dumps(answers), flush=True)
    return 0


def _main(argv: list[str]) -> int:
    """``submit-keys LOCATION FLOW GO_FILE KEY...``, ``die-after enqueue|ack LOCATION FLOW``
    (a durable backend, on the system clock) or ``read LOCATION TASK_ID...``."""
    command, *rest = argv
    if command == "read":
        location, *task_ids = rest
        return _read(open_backend(location, durable=False, env={}), task_ids)
    if command == "submit-keys":
        location, flow_path, go_file, *keys = rest
        backend = open_backend(location, durable=False, env={})
        code = _submit_keys(backend, flow_path, go_file, keys)
        backend.close()
        return code
    verb, location, flow_path = rest
    return _die_after(open_backend(location, durable=True, env={}), verb, flow_path)


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
