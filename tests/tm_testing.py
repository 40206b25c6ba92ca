"""Test helpers shared by the engine tests: a fake clock, task and flow builders, ``tm`` as a
real time-bounded subprocess, a process tracker, bounded waits, and the helper modules that
worker subprocesses import.

A plain module rather than part of ``conftest.py``: with several ``conftest.py`` files in the
tree (and no packages), ``from conftest import ...`` resolves to whichever was loaded last.
Fixtures live in ``tests/conftest.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tracemind.backend.file.pack_writer import NEXT_PACK_THREAD
from tracemind.backend.protocol import Submitter
from tracemind.queue.names import PendingName, new_task_id
from tracemind.queue.protocol import NewTask, TaskQueue
from tracemind.queue.records import new_record

START_S = 1_800_000_000.0
"""The fake clock's epoch (2027-01-15): far from the real time, so a mix-up shows."""
SUBPROCESS_TIMEOUT_S = 60.0
NOBODY = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")
NO_THREAD_PRELUDE = """
import resource, threading
resource.setrlimit(resource.RLIMIT_NPROC, (1, 1))  # (this process counts: no thread may start)
try:
    threading.Thread(target=lambda: None).start()
    print("a thread started")
except RuntimeError:
    print("no thread may start")
"""
"""Child script lines that leave the process (of a user with no other process) unable to start
a thread, as ``RLIMIT_NPROC`` does, and say whether that holds."""
"""Prefix that runs a command as uid/gid 65534 (tests run as root, which ignores mode bits)."""


class FakeClock:
    """A wall clock that moves only when told to (epoch seconds)."""

    def __init__(self, start_s: float = START_S) -> None:
        self.now_s = start_s

    def __call__(self) -> float:
        return self.now_s

    def advance(self, seconds: float) -> float:
        self.now_s += seconds
        return self.now_s


def packs_made_ahead() -> None:
    """Wait for this process's helper threads that make writers' next packs ahead
    (``PackWriter``): a listing of the data made meanwhile would race them."""
    for thread in threading.enumerate():
        if thread.name == NEXT_PACK_THREAD:
            thread.join()


def files_under(root: Path) -> list[str]:
    """Every path under ``root``, relative and sorted (empty if ``root`` does not exist), once
    this process's packs made ahead are made."""
    packs_made_ahead()
    if not root.exists():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# -- tasks and flows ---------------------------------------------------------------------------

ECHO_FLOW = {
    "flow": {
        "id": "echo",
        "steps": [{"id": "echo", "kind": "task", "hooks": {"run": "tracemind.steps.echo"}}],
    }
}


def make_task(
    clock: Callable[[], float],
    *,
    max_attempts: int = 3,
    inputs: dict[str, Any] | None = None,
    due_in_s: float = 0.0,
    key: str | None = None,
) -> NewTask:
    """A task record as the submitter builds it, due ``due_in_s`` after the clock's now."""
    now_s = clock()
    task_id = new_task_id(now_s)
    record = new_record(
        task_id=task_id,
        flow={"flow": {"id": "unit"}, "source_path": "unit.json", "sha256": "0" * 64},
        inputs=inputs or {},
        max_attempts=max_attempts,
        enqueued_at=now_s,
        idempotency_key=key,
    )
    return NewTask(task_id, record, now_s + due_in_s)


@dataclass
class FlowFiles:
    """Writes flow files (JSON) under one directory."""

    root: Path

    def write(
        self,
        name: str,
        hook: str,
        *,
        retry: dict[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> Path:
        """A two-step flow: a task step running ``hook``, then a finish step."""
        flow: dict[str, Any] = {
            "id": name,
            "steps": [
                {"id": "work", "kind": "task", "hooks": {"run": hook}},
                {"id": "done", "kind": "finish"},
            ],
            "edges": [{"from": "work", "to": "done"}],
        }
        if retry is not None:
            flow["retry"] = retry
        if timeout_s is not None:
            flow["timeout_s"] = timeout_s
        return self.write_raw(name, {"flow": flow})

    def write_raw(self, name: str, doc: Any) -> Path:
        path = self.root / f"{name}.json"
        path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
        return path


@dataclass
class QueueHarness:
    """One backend under test: its queue, the clock it runs on, and a way to open a second
    instance on the same storage (what another process would see)."""

    queue: TaskQueue
    clock: FakeClock
    reopen: Callable[[], TaskQueue]
    submitter: Callable[[float], Submitter]

    def put(self, **kwargs: Any) -> str:
        task = make_task(self.clock, **kwargs)
        self.queue.enqueue([task])
        return task.task_id


# -- helper modules for subprocesses (written to tmp_path/helpers, put on PYTHONPATH) ----------

HOOKS_SOURCE = '''
"""Hooks for flows run by worker subprocesses in tests."""
import os
import signal
import time


def _record(ctx, state):
    line = f"{ctx.get('task_id')} {os.getpid()} {ctx.get('attempt')}\\n"
    fd = os.open(os.path.join(os.environ["TM_TEST_RECORD_DIR"], f"{os.getpid()}.log"),
                 os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def record(ctx, state):
    _record(ctx, state)
    return {"recorded": True}


def record_sleep(ctx, state):
    _record(ctx, state)
    time.sleep(float(state.get("seconds", 0)))
    return {"slept": state.get("seconds", 0)}


def kill_self(ctx, state):
    _record(ctx, state)
    os.kill(os.getpid(), signal.SIGKILL)


def fail_unless_file(ctx, state):
    _record(ctx, state)
    if not os.path.exists(state["marker"]):
        raise RuntimeError("marker missing")
    return {"ok": True}
'''

CONSUMER_SOURCE = '''
"""A consumer loop over the library: python -m tm_test_consumer CONSUMER_ID LEASE_S STOP_FILE.

Each execution appends "task_id pid attempt" to $TM_TEST_RECORD_DIR/<pid>.log (flushed before
the task is acknowledged; see Recorder.execute for tasks that fail on purpose); expired leases
are recovered every 0.2 s; exits once STOP_FILE exists and nothing is due.
"""
import os
import sys
import time
from pathlib import Path

from tracemind.backend import open_backend
from tracemind.backend.location import data_location
from tracemind.config import durable
from tracemind.worker.consumer import Consumer


class Recorder:
    def __init__(self):
        path = os.path.join(os.environ["TM_TEST_RECORD_DIR"], f"{os.getpid()}.log")
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def execute(self, task):
        os.write(self.fd, f"{task.task_id} {os.getpid()} {task.attempt}\\n".encode())
        # A task whose input names a kind works 20 ms and fails as its kind says: "flaky" on
        # its first attempt, "doomed" on every one ("ok" never).
        kind = (task.record.get("input") or {}).get("kind")
        if kind is not None:
            time.sleep(0.02)
        if kind == "doomed" or (kind == "flaky" and task.attempt == 1):
            raise RuntimeError(f"{kind} attempt {task.attempt}")
        return {"pid": os.getpid()}


def main():
    consumer_id, lease_s, stop_file = sys.argv[1], float(sys.argv[2]), Path(sys.argv[3])
    queue = open_backend(data_location(), durable=durable()).queue
    consumer = Consumer(queue, Recorder(), consumer_id, lease_s=lease_s)
    Path(os.environ["TM_TEST_RECORD_DIR"], f"ready-{consumer_id}").touch()
    next_recover = 0.0
    while True:
        if time.monotonic() >= next_recover:
            queue.recover()
            next_recover = time.monotonic() + 0.2
        if not consumer.run_once():
            if stop_file.exists():
                return 0
            time.sleep(0.01)


if __name__ == "__main__":
    raise SystemExit(main())
'''

PRODUCER_SOURCE = '''
"""python -m tm_test_producer FLOW COUNT OUT_FILE [GO_FILE [KEY]]: submit COUNT tasks one by one
(after GO_FILE appears, when given) and write "task_id duplicate" lines to OUT_FILE."""
import sys
import time
from pathlib import Path

from tracemind.backend import open_backend
from tracemind.backend.location import data_location
from tracemind.config import durable, idempotency_ttl_s
from tracemind.flows import load_flow


def main():
    flow, count, out = load_flow(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    go = Path(sys.argv[4]) if len(sys.argv) > 4 else None
    key = sys.argv[5] if len(sys.argv) > 5 else None
    submitter = open_backend(data_location(), durable=durable()).submitter(idempotency_ttl_s())
    if go is not None:
        out.with_suffix(".ready").touch()
    deadline = time.monotonic() + 30
    while go is not None and not go.exists():
        if time.monotonic() > deadline:
            return 3
        time.sleep(0.001)
    lines = []
    for n in range(count):
        result = submitter.submit(flow, {"n": n}, idempotency_key=key)
        lines.append(f"{result.task_id} {int(result.duplicate)}\\n")
    out.write_text("".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
'''


def read_records(record_dir: Path) -> list[tuple[str, int, int]]:
    """Every (task_id, pid, attempt) the helper hooks and consumers recorded."""
    rows = []
    for path in sorted(record_dir.glob("*.log")):
        for line in path.read_text().splitlines():
            task_id, pid, attempt = line.split()
            rows.append((task_id, int(pid), int(attempt)))
    return rows


# -- subprocesses ------------------------------------------------------------------------------


def tm_command() -> list[str]:
    script = Path(sys.executable).parent / "tm"
    return [str(script)] if script.exists() else [sys.executable, "-m", "tracemind"]


REPO = Path(__file__).resolve().parents[1]


def run_in_repo(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -c code args...`` from the repository's root (where ``bench`` is importable),
    within :data:`SUBPROCESS_TIMEOUT_S`, its output captured as text."""
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
    )


class Processes:
    """Starts subprocesses and, at teardown, stops every one still running (by its pid)."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[Any]] = []

    def start(self, cmd: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        proc = subprocess.Popen(list(cmd), **kwargs)
        self.started.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


@dataclass
class Tm:
    """Runs ``tm`` as a real subprocess with a bounded timeout."""

    env: dict[str, str]
    cwd: Path
    processes: Processes

    def __call__(
        self,
        *args: str | os.PathLike[str],
        timeout_s: float = SUBPROCESS_TIMEOUT_S,
        env: dict[str, str] | None = None,
        as_nobody: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(args, as_nobody),
            env={**self.env, **(env or {})},
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )

    def command(self, args: Sequence[str | os.PathLike[str]], as_nobody: bool = False) -> list[str]:
        return [*(NOBODY if as_nobody else ()), *tm_command(), *map(str, args)]

    def json(self, *args: str | os.PathLike[str], **kwargs: Any) -> Any:
        """Run ``tm``, require exit 0, and parse its stdout."""
        proc = self(*args, **kwargs)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    def start(
        self, *args: str | os.PathLike[str], stdout: Path, env: dict[str, str] | None = None
    ) -> subprocess.Popen[Any]:
        """Start a long-running ``tm`` (e.g. ``workers start``) with stdout+stderr to a file."""
        with open(stdout, "ab") as sink:
            return self.processes.start(
                self.command(args),
                env={**self.env, **(env or {})},
                cwd=self.cwd,
                stdout=sink,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.02)


def json_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON log lines of a process's output file (other lines are ignored)."""
    events = []
    for line in path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if isinstance(event, dict):
                events.append(event)
    return events


def pending_path(queue: Any, name: PendingName) -> Path:
    """Where the task file ``name`` lives in ``queue``'s bucketed ``pending/`` (bucket made)."""
    path = Path(queue.waiting.path_of(name))
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def pending_names(queue: Any) -> list[str]:
    """The task file names waiting in ``queue`` (every bucket), sorted."""
    return sorted(str(name) for name in queue.waiting.entries())


def done_path(queue: Any, task_id: str) -> Path:
    """Where ``queue`` keeps the done record of ``task_id`` (its hour bucket made)."""
    path = Path(queue.done_path(task_id))
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def done_files(done_dir: Path) -> list[Path]:
    """Every done record under a queue's ``done/`` directory (all hour buckets), sorted."""
    return sorted(done_dir.glob("*/*.json"))


def damage_record(path: Path | str, task_id: str, torn: bytes) -> None:
    """Damage the stored record of one task at ``path`` as a crash or a bad disk would: a
    single-task file is overwritten with ``torn``; in a pack (shared by other tasks, see
    ``tracemind.backend.file.packs``) only this task's record line is overwritten in place, with
    ``torn`` padded to the line's length, so the other tasks' records stay whole."""
    data = Path(path).read_bytes()
    if not data.startswith(b"TMPACK "):
        Path(path).write_bytes(torn)
        return
    start = data.index(b"\nR " + task_id.encode() + b" ")
    record_at = data.index(b" {", start) + 1
    end = data.index(b"\n", record_at)
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, torn[: end - record_at].ljust(end - record_at), record_at)
    finally:
        os.close(fd)


def task_file_bytes(path: Path | str) -> bytes:
    """The bytes of the task named at ``path`` as a single-task file holds them (its record
    line, then the lines appended for it), whether the name is a file of its own or a link to
    a pack shared with other tasks; the task id is read from the name."""
    import re

    from tracemind.backend.file.packs import task_bytes

    found = re.search(r"[0-9a-f]{22}", Path(path).name)
    assert found is not None, f"no task id in {path}"
    return task_bytes(Path(path).read_bytes(), found.group(0))


def task_record(path: Path | str) -> dict[str, Any]:
    """The record of the task named at ``path`` (see :func:`task_file_bytes`)."""
    record: dict[str, Any] = json.loads(task_file_bytes(path).partition(b"\n")[0])
    return record


def key_record(path: Path | str) -> dict[str, Any]:
    """The first line of the key record at ``path``: its task's record (out of the task's
    pack when the record is a link to one), or a record of an earlier version."""
    from tracemind.backend.file.packs import keyed_task_bytes

    data = keyed_task_bytes(Path(path).read_bytes(), Path(path).name[:40])
    record: dict[str, Any] = json.loads(data.partition(b"\n")[0])
    return record


class ListingLog:
    """Wraps ``os.scandir`` and ``os.listdir`` (:meth:`install`): the directories listed."""

    def __init__(self) -> None:
        self.real = os.scandir
        self.real_listdir = os.listdir
        self.listed: list[str] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> ListingLog:
        monkeypatch.setattr(os, "scandir", self)
        monkeypatch.setattr(os, "listdir", self.listdir)
        return self

    def __call__(self, path: Any = ".") -> Any:
        self.listed.append(os.fspath(path))
        return self.real(path)

    def listdir(self, path: Any = ".") -> list[Any]:
        self.listed.append(os.fspath(path))
        return self.real_listdir(path)

    def buckets(self) -> list[str]:
        """The inner buckets of pending/ that were listed (``…/pending/{outer}/{inner}``)."""
        paths = [p.rstrip("/") for p in self.listed]
        return [p for p in paths if _is_outer(os.path.basename(os.path.dirname(p)))]


def _is_outer(name: str) -> bool:
    return len(name) == 7 and name.isdigit()
