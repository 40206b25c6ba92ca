"""Our long-running side for figures 5 and 6: the daemon in the foreground when ``tm daemon
start`` exists, else the foreground pool ``tm workers start -n 2``; its JSON log is read live."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from bench.core import BenchError
from bench.env import ours_env, stop_process
from bench.tmlogs import epoch_s, parse_line

STOP_TIMEOUT_S = 20.0


def daemon_available(tm: str, env: dict[str, str]) -> bool:
    """True once ``tm daemon start --foreground`` is a command of this ``tm``."""
    probe = subprocess.run(
        [tm, "daemon", "start", "--help"],
        env={**env, "TM_ENABLE_DAEMON": "1"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return probe.returncode == 0 and "--foreground" in probe.stdout


class OurPool:
    """A pool of ``workers`` workers on ``data_dir``, started on enter and stopped (SIGTERM,
    graceful) on exit. ``kind`` says which command runs it: "daemon" or "workers"."""

    def __init__(
        self, tm: str, data_dir: Path, workers: int = 2, status_bind: str | None = None
    ) -> None:
        self.env = ours_env(data_dir)
        self.kind = "daemon" if daemon_available(tm, self.env) else "workers"
        if status_bind is not None and self.kind != "daemon":
            raise BenchError("the status endpoint needs `tm daemon start`, which is missing")
        if self.kind == "daemon":
            self.env["TM_ENABLE_DAEMON"] = "1"
            self.cmd = [
                tm,
                "daemon",
                "start",
                "--foreground",
                "--inherit-logs",
                "--workers",
                str(workers),
                "--state-dir",
                str(data_dir / "state"),
            ]
            if status_bind is not None:
                self.cmd += ["--status-bind", status_bind]
        else:
            self.cmd = [tm, "workers", "start", "-n", str(workers)]
        self.workers = workers
        self.workers_started = 0
        self.status_started = status_bind is None
        self.started_s: dict[str, float] = {}
        self.succeeded_s: dict[str, float] = {}
        self._changed = threading.Condition()
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise BenchError("pool not started")
        return self._proc.pid

    def __enter__(self) -> OurPool:
        self._proc = subprocess.Popen(
            self.cmd, env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE
        )
        self._reader = threading.Thread(target=self._read, name="pool-log", daemon=True)
        self._reader.start()
        try:
            self.wait_for(self.ready, 60.0, "the workers (and status server) to start")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._proc is not None:
            stop_process(self._proc, signal.SIGTERM, STOP_TIMEOUT_S)
        if self._reader is not None:
            self._reader.join(timeout=5)

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            event = parse_line(line)
            if event is None:
                continue
            with self._changed:
                name = event.get("event")
                if name == "worker started":
                    self.workers_started += 1
                elif name == "status server started":
                    self.status_started = True
                elif name == "task started" and "task_id" in event:
                    self.started_s.setdefault(event["task_id"], epoch_s(event))
                elif name == "task succeeded" and "task_id" in event:
                    self.succeeded_s[event["task_id"]] = epoch_s(event)
                else:
                    continue
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def ready(self) -> bool:
        return self.workers_started >= self.workers and self.status_started

    def succeeded(self, task_id: str) -> bool:
        return task_id in self.succeeded_s

    def wait_for(self, done: Callable[[], bool], timeout_s: float, what: str) -> None:
        """Block until ``done()`` is true; BenchError after ``timeout_s`` or if the pool died."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while not done():
                if self._proc is not None and self._proc.poll() is not None:
                    raise BenchError(f"`{' '.join(self.cmd[1:3])}` exited while waiting for {what}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BenchError(f"timed out after {timeout_s:g} s waiting for {what}")
                self._changed.wait(min(left, 0.5))
