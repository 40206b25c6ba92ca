"""The daemon tests' harness: real ``tm`` processes on per-test directories.

A module of its own rather than conftest.py, so test modules can import it by a name no other
test folder uses. The ``daemon_env`` fixture (conftest.py) gives each test its own data dir
(``TM_DATA_DIR``), state dir (passed as ``--state-dir``), a helper module of hooks and runtimes
on ``PYTHONPATH``, and a teardown that stops every daemon the test started: through ``tm daemon
stop``, then by SIGKILL of a PID only after :func:`~tracemind.daemon.identity.is_same_process`
confirmed it is the process recorded. Every subprocess call and every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tm_testing import tm_command
from tracemind.daemon.identity import is_same_process, start_ticks

SUBPROCESS_TIMEOUT_S = 60.0
HELPERS_MODULE = "tm_daemon_helpers"

HELPERS_SOURCE = '''
"""Hooks and runtimes for the daemon tests (imported by ``tm`` and by the daemon's workers).

Hooks leave a mark file ``<what>.<task_id>.<attempt>.<pid>`` in $TM_TEST_MARKS, so a test knows
that a task is running, in which worker process, and how often it ran.
"""
import os
import signal
import time
from pathlib import Path


def _mark(ctx, what):
    name = f"{what}.{ctx.get('task_id')}.{ctx.get('attempt')}.{os.getpid()}"
    Path(os.environ["TM_TEST_MARKS"], name).touch()


def sleep(ctx, state):
    _mark(ctx, "started")
    time.sleep(float(state.get("seconds", 0)))
    _mark(ctx, "finished")
    return {"slept": state.get("seconds", 0)}


def sleep_first(ctx, state):
    """Sleep only on the first attempt (a task to kill mid-run that is quick when re-run)."""
    _mark(ctx, "started")
    if ctx.get("attempt") == 1:
        time.sleep(float(state.get("seconds", 0)))
    return {"attempt_seen": ctx.get("attempt")}


def wait_for_cancel(ctx, state):
    """Mark, then wait (at most 30 s) until the task's cancellation is requested."""
    _mark(ctx, "started")
    deadline = time.monotonic() + 30
    while not ctx["cancel_requested"]() and time.monotonic() < deadline:
        time.sleep(0.05)
    _mark(ctx, "saw-cancel" if ctx["cancel_requested"]() else "no-cancel")
    return {}


def fail_first(ctx, state):
    """Fail the first attempt (a task that goes through retry), succeed after."""
    if ctx.get("attempt") == 1:
        raise RuntimeError("first attempt fails")
    time.sleep(float(state.get("seconds", 0)))
    return {"attempt_seen": ctx.get("attempt")}


def second_step(ctx, state):
    _mark(ctx, "second")
    return {}


def kill_worker(ctx, state):
    _mark(ctx, "started")
    os.kill(os.getpid(), signal.SIGKILL)


class CountingRuntime:
    """Appends "task_id attempt" to a per-process file (O_APPEND), then runs the task's flow."""

    def __init__(self):
        from tracemind.worker.runtime import FlowRuntime

        self.flow_runtime = FlowRuntime()
        self.path = os.path.join(os.environ["TM_TEST_EXEC_DIR"], f"exec-{os.getpid()}.log")

    def execute(self, task):
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{task.task_id} {task.attempt}\\n".encode())
        finally:
            os.close(fd)
        return self.flow_runtime.execute(task)


def counting():
    return CountingRuntime()


def broken():
    raise RuntimeError("this runtime cannot start")


def flaky():
    """Cannot start until the file ``runtime-ok`` exists in $TM_TEST_MARKS (a dependency that
    comes up late), then counts like ``counting``."""
    if not os.path.exists(os.path.join(os.environ["TM_TEST_MARKS"], "runtime-ok")):
        raise RuntimeError("a dependency is not up yet")
    return CountingRuntime()


def exits():
    os._exit(9)
'''


def process_alive(pid: int, ticks: int | None = None) -> bool:
    """Whether ``pid`` is a live (not zombie) process, and the same one when ``ticks`` is given."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[-1].split()[0]
    if state in ("Z", "X"):
        return False
    return ticks is None or start_ticks(pid) == ticks


def pids_mentioning(text: str) -> list[int]:
    """Live processes whose command line or environment contains ``text`` (e.g. a tmp dir)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        blob = b""
        for part in ("cmdline", "environ"):
            with contextlib.suppress(OSError):
                blob += (entry / part).read_bytes()
        if text.encode() in blob and process_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def daemon_pids(state_dir: Path) -> list[int]:
    """Live daemon processes (``tm daemon start --foreground``, a Python process) of this state
    dir — not the wrappers (``unshare``, ``sh``) that may have started one."""
    pids = []
    for pid in pids_mentioning(str(state_dir)):
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            python = "python" in os.path.basename(os.readlink(f"/proc/{pid}/exe"))
            if python and b"--foreground" in argv and str(state_dir).encode() in argv:
                pids.append(pid)
    return pids


ECHO_FLOW = {
    "flow": {
        "id": "noop",
        "entry": "echo",
        "steps": [
            {"id": "echo", "kind": "task", "hooks": {"run": "tracemind.steps.echo"}},
            {"id": "end", "kind": "finish"},
        ],
        "edges": [{"from": "echo", "to": "end"}],
    }
}


@dataclass
class DaemonEnv:
    """One test's directories, ``tm`` runner and daemon bookkeeping."""

    root: Path
    env: dict[str, str]
    data_dir: Path
    state_dir: Path
    marks_dir: Path
    exec_dir: Path
    foreground: list[subprocess.Popen[bytes]] = field(default_factory=list)
    identities: list[dict[str, Any]] = field(default_factory=list)

    # -- running tm -----------------------------------------------------------------------------

    def tm(
        self,
        *args: str | os.PathLike[str],
        timeout_s: float = SUBPROCESS_TIMEOUT_S,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*tm_command(), *map(str, args)],
            env=env if env is not None else self.env,
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )

    def tm_ok(self, *args: str | os.PathLike[str], **kwargs: Any) -> str:
        proc = self.tm(*args, **kwargs)
        assert proc.returncode == 0, f"tm {args} -> {proc.returncode}\n{proc.stdout}{proc.stderr}"
        return proc.stdout

    def start(self, *args: str, state_dir: Path | None = None) -> subprocess.CompletedProcess[str]:
        """``tm daemon start`` (detached) on this test's state dir; remembers the daemon."""
        state = state_dir or self.state_dir
        proc = self.tm("daemon", "start", "--state-dir", state, *args)
        self.remember(state)
        return proc

    def start_ok(self, *args: str) -> dict[str, Any]:
        proc = self.start(*args)
        assert proc.returncode == 0, proc.stdout + proc.stderr + self.log_tail()
        assert "daemon started" in proc.stdout, proc.stdout
        meta = self.meta()
        assert meta is not None
        return meta

    def start_foreground(
        self, *args: str, prefix: Sequence[str] = (), output: str = "foreground.out"
    ) -> subprocess.Popen[bytes]:
        """``tm daemon start --foreground`` as our child, in its own session (``prefix`` runs it
        under a wrapper such as ``unshare``); stdout and stderr go to ``output`` under root."""
        argv = [*prefix, *tm_command(), "daemon", "start", "--foreground"]
        argv += ["--state-dir", str(self.state_dir), *args]
        with open(self.root / output, "ab") as sink:
            proc = subprocess.Popen(
                argv,
                env=self.env,
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.foreground.append(proc)
        return proc

    def stop(self, *args: str, timeout_s: float = 30.0) -> subprocess.CompletedProcess[str]:
        return self.tm("daemon", "stop", "--state-dir", self.state_dir, *args, timeout_s=timeout_s)

    def ps(self, state_dir: Path | None = None) -> dict[str, Any]:
        """``tm daemon ps --json``, checking its exit code: 0 while running, 3 when stopped."""
        proc = self.tm("daemon", "ps", "--json", "--state-dir", state_dir or self.state_dir)
        doc: dict[str, Any] = json.loads(proc.stdout)
        expected = 3 if doc["state"] == "stopped" else 0
        assert proc.returncode == expected, f"ps -> {proc.returncode}\n{proc.stdout}{proc.stderr}"
        return doc

    def ps_table(self, state_dir: Path | None = None) -> str:
        """``tm daemon ps`` (the table), whatever its exit code (3 when stopped)."""
        proc = self.tm("daemon", "ps", "--state-dir", state_dir or self.state_dir)
        assert proc.returncode in (0, 3), f"ps -> {proc.returncode}\n{proc.stdout}{proc.stderr}"
        return proc.stdout

    # -- flows and tasks ------------------------------------------------------------------------

    def flow(
        self,
        name: str,
        hook: str,
        *,
        retry: dict[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> Path:
        """A JSON flow ``name`` running ``hook`` (a function of the helper module, or dotted)."""
        spec = hook if "." in hook else f"{HELPERS_MODULE}.{hook}"
        flow: dict[str, Any] = {
            "id": name,
            "entry": "work",
            "steps": [
                {"id": "work", "kind": "task", "hooks": {"run": spec}},
                {"id": "end", "kind": "finish"},
            ],
            "edges": [{"from": "work", "to": "end"}],
        }
        if retry is not None:
            flow["retry"] = retry
        if timeout_s is not None:
            flow["timeout_s"] = timeout_s
        path = self.root / "flows" / f"{name}.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps({"flow": flow}))
        return path

    def enqueue(self, flow: Path, inputs: dict[str, Any] | None = None) -> str:
        out = self.tm_ok("enqueue", flow, "-i", json.dumps(inputs or {}), "--json")
        task_id: str = json.loads(out)["task_id"]
        return task_id

    def enqueue_many(self, flow: Path, inputs: list[dict[str, Any]]) -> list[str]:
        batch = self.root / f"inputs-{time.monotonic_ns()}.jsonl"
        batch.write_text("".join(json.dumps(item) + "\n" for item in inputs))
        out = self.tm_ok("enqueue", flow, "--inputs", batch, "--json")
        task_ids: list[str] = json.loads(out)["task_ids"]
        return task_ids

    def show(self, task_id: str) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.tm_ok("task", "show", task_id, "--json"))
        return doc

    def wait(self, task_id: str, timeout_s: float = 30.0) -> dict[str, Any]:
        """``tm task wait`` until the task succeeded (asserted) or the bound passed."""
        proc = self.tm(
            "task", "wait", task_id, "--timeout", str(timeout_s), "--json",
            timeout_s=timeout_s + 30,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr + self.log_tail()
        doc: dict[str, Any] = json.loads(proc.stdout)
        return doc

    def marks(self, what: str, task_id: str | None = None) -> list[tuple[str, int, int]]:
        """(task_id, attempt, pid) of every mark ``what`` the helper hooks left."""
        rows = []
        for path in self.marks_dir.glob(f"{what}.*"):
            _, tid, attempt, pid = path.name.split(".")
            if task_id is None or tid == task_id:
                rows.append((tid, int(attempt), int(pid)))
        return sorted(rows)

    def executions(self) -> Counter[str]:
        """How often the counting runtime executed each task id, over all worker processes."""
        counts: Counter[str] = Counter()
        for path in self.exec_dir.glob("exec-*.log"):
            counts.update(line.split()[0] for line in path.read_text().splitlines() if line)
        return counts

    # -- state files ----------------------------------------------------------------------------

    def read_json(self, name: str, state_dir: Path | None = None) -> dict[str, Any] | None:
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(((state_dir or self.state_dir) / name).read_text())
            return data if isinstance(data, dict) else None
        return None

    def meta(self) -> dict[str, Any] | None:
        return self.read_json("daemon.json")

    def heartbeat(self) -> dict[str, Any] | None:
        return self.read_json("heartbeat.json")

    def worker_pids(self) -> list[int]:
        """The worker PIDs of the current heartbeat (and remembers them for the teardown)."""
        beat = self.heartbeat() or {}
        pids = [int(pid) for pid in (beat.get("workers") or {}).get("pids", [])]
        for pid in pids:
            self.identities.append({"pid": pid, "ticks": start_ticks(pid), "worker": True})
        return pids

    @property
    def log_path(self) -> Path:
        return self.state_dir / "daemon.log"

    def log_events(self, path: Path | None = None) -> list[dict[str, Any]]:
        """Every line of the log, parsed (a line that is not a JSON object fails the test)."""
        events = []
        for number, line in enumerate((path or self.log_path).read_text().splitlines(), 1):
            event = json.loads(line)
            assert isinstance(event, dict), f"line {number} is not a JSON object: {line}"
            events.append(event)
        return events

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            tail = self.log_path.read_text(errors="replace").splitlines()[-lines:]
            return "\n--- daemon.log tail ---\n" + "\n".join(tail)
        return ""

    # -- bookkeeping and cleanup ----------------------------------------------------------------

    def remember(self, state_dir: Path) -> None:
        """Record the identity of the daemon a state dir names, for the teardown."""
        meta = self.read_json("daemon.json", state_dir)
        if meta is not None and meta not in self.identities:
            self.identities.append({**meta, "state_dir": str(state_dir)})

    def kill_daemon(self, meta: dict[str, Any], *, group: bool) -> None:
        """SIGKILL the daemon ``meta`` describes (and its process group), after verifying it."""
        assert is_same_process(meta), f"pid {meta.get('pid')} is not the recorded daemon"
        pid = int(meta["pid"])
        if group:
            assert os.getpgid(pid) == pid, "the detached daemon leads its own process group"
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)

    def cleanup(self) -> None:
        state_dirs = {
            self.state_dir,
            *(Path(m["state_dir"]) for m in self.identities if "state_dir" in m),
        }
        for state_dir in state_dirs:
            self.remember(state_dir)
            if (state_dir / "daemon.lock").exists():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.tm("daemon", "stop", "--state-dir", state_dir, "--timeout", "10",
                            timeout_s=30)  # fmt: skip
        for proc in self.foreground:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=10)
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)  # our child leads its own session
                proc.wait(timeout=10)
        for ident in self.identities:
            if ident.get("worker"):
                if process_alive(ident["pid"], ident["ticks"]):
                    os.kill(ident["pid"], signal.SIGKILL)
            elif is_same_process(ident):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(ident["pid"]), signal.SIGKILL)


def base_env(root: Path) -> dict[str, str]:
    """The caller's environment without any TM_* variable, plus the helper module's path."""
    helpers = root / "helpers"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TM_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(helpers), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env
