"""The status server: gunicorn serving :mod:`tracemind.status.wsgi`, as a child process of the
daemon (not a thread: gunicorn's arbiter needs its process's main thread). Its worker model and
connection limits are those of :mod:`tracemind.status.gunicorn_process`.

It never outlives the daemon: the arbiter gets PR_SET_PDEATHSIG=SIGKILL, its worker exits when
the arbiter is gone, and ``/livez`` answers 503 anyway once the daemon's heartbeat is stale.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import subprocess
import time
from typing import Any

from tracemind.backend.location import Location
from tracemind.daemon.state import StateDir
from tracemind.errors import TraceMindError
from tracemind.log import get_logger
from tracemind.status.gunicorn_process import gunicorn_argv, start_gunicorn, stop_gunicorn

STARTUP_TIMEOUT_S = 20.0


class StatusServerError(TraceMindError):
    """The status server could not start (port taken, gunicorn failed)."""


def split_bind(bind: str) -> tuple[str, int]:
    host, _, port = bind.rpartition(":")
    return host.strip("[]"), int(port)


def check_port_free(bind: str) -> None:
    host, port = split_bind(bind)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise StatusServerError(f"status port {bind} is already in use") from None
            raise StatusServerError(f"cannot bind the status server to {bind}: {exc}") from None


class StatusServer:
    """A daemon component (start/stop/describe) running gunicorn on ``bind``."""

    def __init__(
        self, bind: str, state: StateDir, location: Location, log_file: str | None
    ) -> None:
        self.bind = bind
        self.state = state
        self.location = location
        self.log_file = log_file
        self.process: subprocess.Popen[bytes] | None = None
        self.log = get_logger("tracemind.status")

    def start(self) -> None:
        check_port_free(self.bind)
        tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
        argv = gunicorn_argv(self.bind, "tracemind.status.wsgi:asgi_app", tmp_dir)
        env = dict(
            os.environ,
            TM_STATUS_STATE_DIR=str(self.state.root),
            # The full location (a password, if any, only ever in an environment).
            TM_STATUS_QUEUE_URL=str(self.location),
            TM_STATUS_LOG_FILE=self.log_file or "",
        )
        self.process = start_gunicorn(argv, env)
        self._wait_listening()
        self.log.info("status server started", bind=self.bind, pid=self.process.pid)

    def _wait_listening(self) -> None:
        host, port = split_bind(self.bind)
        connect_host = "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host == "::" else host)
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        assert self.process is not None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise StatusServerError(
                    f"status server on {self.bind} exited with code {self.process.returncode}"
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection((connect_host, port), timeout=0.5),
            ):
                return
            time.sleep(0.05)
        self.stop()
        raise StatusServerError(f"status server on {self.bind} did not start listening")

    def stop(self) -> None:
        stop_gunicorn(self.process)

    def describe(self) -> dict[str, Any]:
        alive = self.process is not None and self.process.poll() is None
        return {"bind": self.bind, "alive": alive}
