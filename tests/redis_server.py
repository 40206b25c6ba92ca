"""A real ``redis-server`` for tests: its own port on 127.0.0.1, its own directory, AOF on with
``appendfsync always`` by default; started, SIGKILLed, restarted and stopped by its PID.

Where ``redis-server`` is missing the tests that need it skip, except under CI (``CI`` set),
where they fail: a CI run must never pass by skipping the Redis backend.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0


def _missing(message: str) -> None:
    if os.environ.get("CI", "").strip().lower() in {"1", "true", "yes", "on"}:
        pytest.fail(message)
    pytest.skip(message)


def require_redis_server() -> str:
    """The ``redis-server`` binary, with the ``redis`` client importable; skips (fails under CI)
    when either is missing."""
    if importlib.util.find_spec("redis") is None:
        _missing("the redis client is not installed (pip install -e '.[status,redis]')")
    binary = shutil.which("redis-server")
    if binary is None:
        _missing("redis-server is not installed (apt-get install redis-server)")
    assert binary is not None
    return binary


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One ``redis-server`` process and its data directory.

    ``persistence`` is ``"always"`` or ``"everysec"`` (AOF with that fsync policy) or ``"rdb"``
    (snapshots only, every ``rdb_every_s`` seconds if a key changed).
    """

    def __init__(
        self,
        directory: Path,
        *,
        persistence: str = "always",
        password: str | None = None,
        rdb_every_s: int = 1,
        tls: TlsFiles | None = None,
    ) -> None:
        self.binary = require_redis_server()
        self.directory = directory
        self.port = free_port()
        self.persistence = persistence
        self.password = password
        self.rdb_every_s = rdb_every_s
        self.tls = tls
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    def argv(self) -> list[str]:
        argv = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        if self.tls is not None:  # TLS only: the plain port is off
            argv = [self.binary, "--port", "0", "--tls-port", str(self.port)]
            argv += ["--bind", "127.0.0.1", "--tls-auth-clients", "no"]
            argv += ["--tls-cert-file", str(self.tls.cert), "--tls-key-file", str(self.tls.key)]
        argv += ["--dir", str(self.directory), "--daemonize", "no", "--protected-mode", "no"]
        if self.persistence == "rdb":
            argv += ["--appendonly", "no", "--save", f"{self.rdb_every_s} 1"]
        else:
            argv += ["--appendonly", "yes", "--appendfsync", self.persistence, "--save", ""]
        if self.password is not None:
            argv += ["--requirepass", self.password]
        return argv

    def start(self) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        log = (self.directory / "server.log").open("ab")
        self.process = subprocess.Popen(
            self.argv(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        self.wait_ready()
        return self

    def wait_ready(self) -> None:
        """Until the server answers PING with its data loaded (bounded)."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.log_tail()}")
            if self._ping():
                return
            time.sleep(0.02)
        raise RuntimeError(f"redis-server did not answer within {START_TIMEOUT_S} s")

    def _ping(self) -> bool:
        if self.tls is not None:
            return self._tls_ping()
        auth = b""
        if self.password is not None:
            secret = self.password.encode()
            auth = b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n" % (len(secret), secret)
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as sock:
                sock.sendall(auth + b"PING\r\n")
                reply = b""
                while b"PONG" not in reply and b"-" not in reply:
                    chunk = sock.recv(256)
                    if not chunk:
                        return False
                    reply += chunk
                    if auth and reply.count(b"\r\n") >= 2:
                        break
                return b"+PONG" in reply
        except OSError:
            return False

    def _tls_ping(self) -> bool:
        import ssl

        assert self.tls is not None
        context = ssl.create_default_context(cafile=str(self.tls.ca))
        try:
            with (
                socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as raw,
                context.wrap_socket(raw, server_hostname="127.0.0.1") as sock,
            ):
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL, as a crash: no shutdown save, no final fsync."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=STOP_TIMEOUT_S)

    def restart(self) -> None:
        """Start again on the same port and directory (after :meth:`kill` or :meth:`stop`)."""
        self.start()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.kill(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=STOP_TIMEOUT_S)

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return (self.directory / "server.log").read_text()[-2000:]
        return ""


class SharedServer:
    """One server for the whole session (started on first use); each test takes its own key
    prefix on it, so tests never see each other's keys."""

    server: RedisServer | None = None
    root: Path | None = None

    @classmethod
    def url(cls) -> str:
        if cls.server is None:
            cls.root = Path(tempfile.mkdtemp(prefix="tm-redis-"))
            cls.server = RedisServer(cls.root).start()
        return cls.server.url

    @classmethod
    def fresh_location(cls) -> str:
        return f"{cls.url()}?prefix=t{uuid.uuid4().hex[:12]}"

    @classmethod
    def stop(cls) -> None:
        if cls.server is not None:
            cls.server.stop()
            cls.server = None
        if cls.root is not None:
            shutil.rmtree(cls.root, ignore_errors=True)
            cls.root = None


class TlsFiles:
    """A throwaway CA and a server certificate for 127.0.0.1, made with the ``openssl`` tool
    (skips where it is missing, fails under CI)."""

    def __init__(self, directory: Path) -> None:
        openssl = shutil.which("openssl")
        if openssl is None:
            _missing("the openssl tool is not installed")
        assert openssl is not None
        directory.mkdir(parents=True, exist_ok=True)
        self.ca, self.cert, self.key = (
            directory / "ca.pem",
            directory / "server.pem",
            directory / "server.key",
        )
        ca_key, request, extensions = (
            directory / "ca.key",
            directory / "server.csr",
            directory / "ext.cnf",
        )
        extensions.write_text("subjectAltName=IP:127.0.0.1\n")
        for argv in (
            ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", self.ca],
            ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", self.key, "-out", request],
            ["x509", "-req", "-in", request, "-CA", self.ca, "-CAkey", ca_key, "-CAcreateserial"],
        ):
            tail: list[str | Path] = ["-days", "1"]
            if argv[0] == "req":
                tail += ["-subj", "/CN=tracemind-test"]
            else:
                tail += ["-out", self.cert, "-extfile", extensions]
            subprocess.run(
                [openssl, *map(str, argv), *map(str, tail)],
                check=True,
                capture_output=True,
                timeout=60,
            )
