"""A minimal Redis client for ``tm enqueue``'s path: one socket, RESP2, ``EVAL``, ``AUTH`` and
``SELECT``. Importing redis-py costs about ten times a bare interpreter's start; a submission
needs one command, so it speaks the protocol itself. Everything else (the daemon, workers,
readers) uses redis-py.
"""

from __future__ import annotations

import _socket
import _thread
import os

TYPE_CHECKING = False  # (on `tm enqueue`'s path: no `typing`, no `threading` at run time)
if TYPE_CHECKING:
    from typing import Any

CRLF = b"\r\n"


class ReplyError(Exception):
    """An error reply: ``code`` is its first word (``NOAUTH``, ``OOM``…)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.code = message.split(" ", 1)[0]
        if self.code == "ERR" and "unauthenticated" in message:
            # A server with a password refuses a long command before AUTH this way.
            self.code = "NOAUTH"


class Server:
    """Where a Redis server is and how to log in: host, port, database, credentials, TLS."""

    __slots__ = ("db", "host", "password", "port", "tls", "username")

    def __init__(
        self,
        host: str,
        port: int,
        db: int,
        username: str | None,
        password: str | None,
        tls: bool,
    ) -> None:
        self.host = host
        self.port = port
        self.db = db
        self.username = username
        self.password = password
        self.tls = tls


class Wire:
    """One connection to ``server``, opened on first use and reopened after a failure; safe
    across threads (one command at a time). Failures to connect or read raise :class:`OSError`."""

    def __init__(self, server: Server, *, connect_timeout_s: float, timeout_s: float) -> None:
        self.server = server
        self.connect_timeout_s = connect_timeout_s
        self.timeout_s = timeout_s
        self._sock: Any = None
        self._buffer = b""
        self._lock = _thread.allocate_lock()
        self._pid = os.getpid()

    def call(self, *args: str | int | float) -> Any:
        """Send one command and return its reply; :class:`ReplyError` for an error reply."""
        if self._pid != os.getpid():
            # A forked child: the parent's socket and lock are not its own (never close them).
            self._sock, self._buffer = None, b""
            self._lock, self._pid = _thread.allocate_lock(), os.getpid()
        with self._lock:
            if self._sock is None:
                try:
                    self._connect()
                except BaseException:  # (refused credentials too: never reuse that socket)
                    self.close()
                    raise
            try:
                return self._command(args)
            except OSError:  # (a timeout mid-reply too: what is left to read is not ours)
                self.close()
                raise
            except ReplyError as exc:
                if "Protocol error" in str(exc):
                    self.close()  # (the server closes such a connection)
                raise

    def eval(self, source: str, keys: list[str], args: list[Any]) -> Any:
        """Run a script (sent whole: hashing it for ``EVALSHA`` would import OpenSSL, which costs
        more than the few kilobytes do)."""
        return self.call("EVAL", source, len(keys), *keys, *args)

    def close(self) -> None:
        if self._sock is not None:
            sock, self._sock, self._buffer = self._sock, None, b""
            sock.close()

    def _connect(self) -> None:
        server = self.server
        sock: Any
        if server.tls:
            import socket
            import ssl

            sock = socket.create_connection(
                (server.host, server.port), timeout=self.connect_timeout_s
            )
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=server.host)
        else:
            sock = _connect_plain(server.host, server.port, self.connect_timeout_s)
        sock.settimeout(self.timeout_s)
        self._sock = sock
        if server.password is not None:
            login = (
                [server.password] if server.username is None else [server.username, server.password]
            )
            self._command(("AUTH", *login))
        if server.db:
            self._command(("SELECT", server.db))

    def _command(self, args: tuple[str | int | float, ...]) -> Any:
        assert self._sock is not None
        parts = [b"*%d\r\n" % len(args)]
        for arg in args:
            data = str(arg).encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        self._sock.sendall(b"".join(parts))
        return self._reply()

    def _reply(self) -> Any:
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise ReplyError(rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            return None if size < 0 else self._exactly(size + 2)[:-2].decode()
        if kind == b"*":
            count = int(rest)
            return None if count < 0 else [self._reply() for _ in range(count)]
        raise OSError(f"unexpected reply from the server: {line[:40]!r}")

    def _line(self) -> bytes:
        while CRLF not in self._buffer:
            self._fill()
        line, _, self._buffer = self._buffer.partition(CRLF)
        return line

    def _exactly(self, size: int) -> bytes:
        while len(self._buffer) < size:
            self._fill()
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def _fill(self) -> None:
        assert self._sock is not None
        chunk = self._sock.recv(65536)
        if not chunk:
            raise ConnectionResetError(104, "Connection closed by the server")
        self._buffer += chunk


def _connect_plain(host: str, port: int, timeout_s: float) -> Any:
    """A TCP connection to ``host:port``, as :func:`socket.create_connection` makes it (each
    address in turn, the last failure raised) but through ``_socket``: the ``socket`` module
    costs a cold start more than the rest of this module. An ASCII host name is resolved as
    bytes, which spares loading the IDNA codec."""
    name: str | bytes = host.encode() if host.isascii() else host
    failure: OSError | None = None
    for family, kind, proto, _, address in _socket.getaddrinfo(name, port, 0, _socket.SOCK_STREAM):
        sock = _socket.socket(family, kind, proto)
        try:
            sock.settimeout(timeout_s)
            sock.connect(address)
        except OSError as exc:
            sock.close()
            failure = exc
            continue
        return sock
    raise failure or OSError(f"cannot resolve {host!r}")
