"""One Redis server of a location: the clients, the key names, the scripts, and every Redis
failure turned into one :class:`~tracemind.errors.QueueError` line naming ``host:port`` (never
the password).

Two clients, each made on first use: :mod:`.wire` for submissions (``tm enqueue`` must not pay
for importing redis-py), redis-py for everything else.
"""

from __future__ import annotations

import contextlib
import json
import os

from tracemind.backend.redis import scripts
from tracemind.backend.redis.wire import ReplyError, Server, Wire
from tracemind.errors import QueueError, QueueUnavailable

TYPE_CHECKING = False  # (on `tm enqueue`'s path: no `typing` at run time)
if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping
    from typing import Any

    import redis.exceptions
    from redis.commands.core import Script

    from tracemind.backend.location import Location

CONNECT_TIMEOUT_S = 5.0
COMMAND_TIMEOUT_S = 30.0
"""A reply slower than this is a failure (a blocking wait asks for less, see ``MAX_BLOCK_S``)."""
MIN_VERSION = (7, 0)
MAX_BLOCK_S = 20.0
"""The longest a blocking read waits in one call (below ``COMMAND_TIMEOUT_S``)."""

_REFUSALS = {
    "NOAUTH": "authentication required (give the password in the URL or TM_REDIS_PASSWORD)",
    "WRONGPASS": "authentication failed (wrong user or password)",
    "NOPERM": "the user may not run the queue's commands (ACL)",
    "LOADING": "the server is loading its data; try again",
    "READONLY": "the server is a read-only replica",
    "OOM": "the server is out of memory (maxmemory)",
    "MISCONF": "the server cannot persist its data (MISCONF)",
    "BUSY": "the server is busy running a script; try again",
    "DENIED": "the server refuses clients from other hosts (protected mode: give it a password)",
    "MASTERDOWN": "the replica lost its primary",
}
"""Error replies that are about the server, not about the code: one line each."""
_PASSING = frozenset({"LOADING", "BUSY", "MASTERDOWN"})
"""Refusals that end by themselves (:class:`QueueUnavailable`: a daemon waits them out)."""
WIRE_SCRIPTS = frozenset({"enqueue"})
"""Scripts sent by :mod:`.wire` (what ``tm enqueue`` runs), not by redis-py."""


class Keys:
    """The key names of one queue under ``prefix`` (see docs/queue-format.md)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.ordered = [f"{prefix}:{name}" for name in scripts.KEY_ORDER]
        """The ``KEYS`` every script takes."""
        named = dict(zip(scripts.KEY_ORDER, self.ordered, strict=True))
        self.due = named["due"]
        self.ready = named["ready"]
        self.leases = named["leases"]
        self.done = named["done"]
        self.dead = named["dead"]
        self.keyed = named["keyed"]
        self.audit = named["audit"]
        self.events = named["events"]
        self.damaged = named["damaged"]
        self.tasks = named["tasks"]
        self.registry = f"{prefix}:registry"

    def task(self, task_id: str) -> str:
        return f"{self.prefix}:task:{task_id}"

    def audit_copy(self, task_id: str, kind: str, now_ms: int) -> str:
        return f"{self.prefix}:audit:{kind}:{task_id}:{now_ms}"

    @staticmethod
    def digest(idempotency_key: str) -> str:
        """What an idempotency key is stored under (``<prefix>:key:<digest>``)."""
        import hashlib  # (OpenSSL: only submissions with a key pay for it)

        return hashlib.sha256(idempotency_key.encode()).hexdigest()[:40]


class Connection:
    """A client of the location's server (thread-safe: a pool of connections) and its scripts.

    Nothing connects until the first command. A command is sent once (no automatic retry: a
    script whose reply was lost must not run twice); a failure raises :class:`QueueError`.
    """

    def __init__(self, location: Location, env: Mapping[str, str] = os.environ) -> None:
        parts = location.redis_parts()
        self.where = f"{parts['host']}:{parts['port']}"
        self.keys = Keys(str(parts["prefix"]))
        username = parts["username"]
        self.server = Server(
            host=str(parts["host"]),
            port=int(str(parts["port"])),
            db=int(str(parts["db"])),
            username=username if isinstance(username, str) else None,
            password=location.password(env),
            tls=bool(parts["tls"]),
        )
        self._client: Any = None
        self._wire: Wire | None = None
        self._version_ok = False
        self._scripts: dict[str, Script] = {}

    @property
    def client(self) -> Any:
        """The redis-py client (a thread-safe pool), made on first use. Any: redis-py's
        annotations do not follow ``decode_responses`` (every reply here is a str)."""
        if self._client is None:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            server = self.server
            self._client = redis.Redis(
                host=server.host,
                port=server.port,
                db=server.db,
                username=server.username,
                password=server.password,
                ssl=server.tls,
                socket_connect_timeout=CONNECT_TIMEOUT_S,
                socket_timeout=COMMAND_TIMEOUT_S,
                retry=Retry(NoBackoff(), 0),
                decode_responses=True,
            )
        return self._client

    @property
    def wire(self) -> Wire:
        if self._wire is None:
            self._wire = Wire(
                self.server,
                connect_timeout_s=CONNECT_TIMEOUT_S,
                timeout_s=COMMAND_TIMEOUT_S,
            )
        return self._wire

    def check_version(self) -> None:
        """:class:`QueueError` unless the server is Redis 7.0 or later (the read-only scripts
        use 7.0's script flags); asked once per connection object."""
        if self._version_ok:
            return
        with self.errors():
            version = str(self.client.info(section="server").get("redis_version", "0"))
        numbers = tuple(int(part) for part in version.split(".")[:2] if part.isdigit())
        if numbers < MIN_VERSION:
            raise QueueError(
                f"redis {self.where}: Redis 7.0 or later is needed (this is {version})"
            )
        self._version_ok = True

    def run(self, name: str, *args: str | int | float) -> Any:
        """Run script ``name`` with ``args`` after the prefix (see :mod:`.scripts`)."""
        if name in WIRE_SCRIPTS:
            return self._run_on_wire(name, args)
        self.check_version()
        script = self._scripts.get(name)
        if script is None:
            script = self._scripts[name] = self.client.register_script(scripts.source(name))
        with self.errors():
            return script(keys=self.keys.ordered, args=[self.keys.prefix, *args])

    def _run_on_wire(self, name: str, args: tuple[str | int | float, ...]) -> Any:
        with self._wire_errors():
            return self.wire.eval(
                scripts.source(name), self.keys.ordered, [self.keys.prefix, *args]
            )

    def on_wire(self, *command: str | int | float) -> Any:
        """Send one plain command through :mod:`.wire` (no redis-py: what ``tm enqueue`` runs)
        and return its RESP2 reply (a hash comes back as a flat list); a failure raises
        :class:`QueueError` as :meth:`errors` does."""
        with self._wire_errors():
            return self.wire.call(*command)

    @contextlib.contextmanager
    def _wire_errors(self) -> Iterator[None]:
        """:meth:`errors` for the commands sent through :mod:`.wire`."""
        try:
            yield
        except ReplyError as exc:
            if exc.code not in _REFUSALS:
                raise
            raise _refused(self.where, exc.code) from None
        except OSError as exc:
            raise QueueUnavailable(f"redis {self.where}: {_unreachable(exc)}") from None

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        """Turn a failure of a redis-py call into one :class:`QueueError` line."""
        import redis.exceptions

        try:
            yield
        except redis.exceptions.AuthenticationError as exc:
            raise QueueError(f"redis {self.where}: {_refusal(exc)}") from None
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            raise QueueUnavailable(f"redis {self.where}: {_unreachable(exc)}") from None
        except redis.exceptions.ResponseError as exc:
            code = _code(exc)
            if code not in _REFUSALS:
                raise  # a reply about the request itself: a bug, shown whole
            raise _refused(self.where, code) from None

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
        if self._wire is not None:
            self._wire.close()


def _refused(where: str, code: str) -> QueueError:
    """The error for a refusal ``code`` of :data:`_REFUSALS` (one that passes by itself is
    :class:`QueueUnavailable`)."""
    kind = QueueUnavailable if code in _PASSING else QueueError
    return kind(f"redis {where}: {_REFUSALS[code]}")


def _code(exc: redis.exceptions.RedisError) -> str:
    """The error reply's code (``OOM``, ``NOAUTH``…): redis-py keeps it aside for the errors it
    has a class for, and leaves it in the message for the others."""
    return str(getattr(exc, "status_code", None) or str(exc).split(" ", 1)[0])


def _refusal(exc: redis.exceptions.RedisError) -> str:
    """Why the server refused the client's credentials."""
    return _REFUSALS.get(_code(exc), _REFUSALS["WRONGPASS"])


def _unreachable(exc: BaseException) -> str:
    """Why the server could not be used, in a few words: ``unreachable (Connection refused)``,
    or ``TLS failed (…)`` when the handshake did (redis-py wraps the socket's error, and its
    own message names the address again)."""
    cause = exc if isinstance(exc, OSError) else (exc.__cause__ or exc.__context__)
    if isinstance(cause, OSError) and type(cause).__module__ == "ssl":
        detail = getattr(cause, "verify_message", None) or getattr(cause, "reason", None)
        return f"TLS failed ({detail or cause})"
    if isinstance(cause, OSError) and cause.strerror:
        return f"unreachable ({cause.strerror})"
    text = str(exc).rstrip(".")
    head, sep, tail = text.rpartition(". ")
    reason = tail if sep and "connecting to" in head else text or type(exc).__name__
    return f"unreachable ({reason})"


def dumps(value: object) -> str:
    """JSON text as the queue stores it."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
