"""Where the data is: one value that parses, prints and redacts a backend location.

:func:`data_location` resolves the flags and the environment to one location. A location is
the only serialized form of "where the data is": the detached daemon's argv, the
daemon's state files, the worker spec and the status server all carry its string.

``file:///abs/root``
    a data root holding ``queue/``, ``idempotency/`` and ``dlq/`` (what ``TM_DATA_DIR`` names).
    Directories given one by one (``--queue-dir``/``--idempotency-dir``/``--dlq-dir``) that do
    not sit under one root are query keys: ``file:///abs/root?dlq=/elsewhere/dlq`` (each value
    absolute and percent-encoded; the root is then the queue directory's parent).
``redis://[user:password@]host[:port][/db][?prefix=tm:orders]``, ``rediss://…`` (TLS)
    a Redis server; the password may come from ``TM_REDIS_PASSWORD`` instead (see
    :meth:`Location.password`). :meth:`Location.redacted` never shows it.

Bad input raises :class:`~tracemind.errors.UsageError` with one line (the CLI exits 2).
This module is on the ``tm enqueue`` path: no ``urllib``/``pathlib`` on the ``file://`` path.
"""

from __future__ import annotations

import os

from tracemind.errors import UsageError
from tracemind.values import Value

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

FILE_DIR_NAMES = ("queue", "idempotency", "dlq")
"""The three stores of a file data root, in the order :meth:`Location.file_dirs` returns them."""
REDIS_SCHEMES = ("redis", "rediss")
MASK = "***"
"""What :meth:`Location.redacted` shows instead of a password."""
KNOWN = "file:// (a data root), redis:// or rediss://"


class Location(Value):
    """A parsed backend location; ``str(location)`` is its canonical text (password included,
    for a child process's environment only); :meth:`redacted` is what is shown and logged."""

    __slots__ = ("scheme", "text")

    def __init__(self, scheme: str, text: str) -> None:
        self.scheme = scheme
        self.text = text

    def __str__(self) -> str:
        return self.text

    @classmethod
    def parse(cls, text: str) -> Location:
        """The location ``text`` names; one-line ``UsageError`` when unknown or malformed."""
        scheme, sep, rest = text.partition("://")
        if not sep or not scheme or not scheme.isascii() or not scheme.isalpha():
            raise UsageError(f"queue location {text!r}: not a URL (expected {KNOWN})")
        scheme = scheme.lower()
        if scheme == "file":
            return cls.for_file_dirs(*_file_dirs(text, rest))
        if scheme in REDIS_SCHEMES:
            _redis_parts(text)  # (validates)
            return cls(scheme, text)
        raise UsageError(
            f"queue location {text!r}: unknown scheme {scheme!r} (this version knows {KNOWN})"
        )

    @classmethod
    def parse_redacted(cls, text: str) -> Location:
        """The location a file or log recorded as :meth:`redacted` text: a masked password is
        dropped, so :meth:`password` then comes from ``TM_REDIS_PASSWORD``."""
        head, sep, tail = text.partition("://")
        if sep and head.lower() in REDIS_SCHEMES:
            netloc, slash, path = tail.partition("/")
            userinfo, at, hostport = netloc.rpartition("@")
            if at and userinfo.endswith(":" + MASK):
                text = f"{head}{sep}{userinfo[: -len(MASK) - 1]}{at}{hostport}{slash}{path}"
        return cls.parse(text)

    @classmethod
    def for_file_dirs(cls, queue: str, idempotency: str, dlq: str) -> Location:
        """The ``file://`` location of three absolute directories."""
        root = os.path.dirname(os.path.normpath(queue))
        extras = [
            f"{name}={_quote(path)}"
            for name, path in zip(FILE_DIR_NAMES, (queue, idempotency, dlq), strict=True)
            if os.path.normpath(path) != os.path.join(root, name)
        ]
        text = "file://" + _quote(root) + ("?" + "&".join(extras) if extras else "")
        return cls("file", text)

    @classmethod
    def for_root(cls, root: str) -> Location:
        """The ``file://`` location of a data root (made absolute against the current directory)."""
        path = root if os.path.isabs(root) else os.path.join(os.getcwd(), root)
        path = os.path.normpath(path)
        return cls.for_file_dirs(*(os.path.join(path, name) for name in FILE_DIR_NAMES))

    @property
    def is_file(self) -> bool:
        return self.scheme == "file"

    def file_dirs(self) -> tuple[str, str, str]:
        """The queue, idempotency and dead-letter directories of a ``file://`` location."""
        if not self.is_file:
            raise UsageError(f"queue location {self.redacted()}: not a file location")
        return _file_dirs(self.text, self.text[len("file://") :])

    def redis_parts(self) -> dict[str, object]:
        """``host``, ``port``, ``db``, ``username``, ``password`` (from the URL, or None),
        ``prefix`` and ``tls`` of a ``redis://`` or ``rediss://`` location."""
        if self.scheme not in REDIS_SCHEMES:
            raise UsageError(f"queue location {self.redacted()}: not a Redis location")
        return _redis_parts(self.text)

    def password(self, env: Mapping[str, str] = os.environ) -> str | None:
        """The Redis password: the URL's, else ``TM_REDIS_PASSWORD``, else None."""
        from_url = self.redis_parts()["password"]
        if isinstance(from_url, str):
            return from_url
        return env.get("TM_REDIS_PASSWORD") or None

    def redacted(self) -> str:
        """The text with any password replaced by ``***``: what ``ps``, logs and pages show."""
        if self.scheme not in REDIS_SCHEMES:
            return self.text
        head, sep, tail = self.text.partition("://")
        netloc, slash, path = tail.partition("/")
        userinfo, at, hostport = netloc.rpartition("@")
        if not at or ":" not in userinfo:
            return self.text
        user = userinfo.partition(":")[0]
        return f"{head}{sep}{user}:{MASK}@{hostport}{slash}{path}"


DIR_SETTINGS = (
    ("queue_dir", "--queue-dir", "TM_QUEUE_DIR"),
    ("idempotency_dir", "--idempotency-dir", "TM_IDEMPOTENCY_DIR"),
    ("dlq_dir", "--dlq-dir", "TM_DLQ_DIR"),
)
"""The seed's per-directory settings of a file location: (argument, flag, variable)."""
LOCATION_VARIABLES = ("TM_QUEUE_URL", "TM_DATA_DIR", *(var for _, _, var in DIR_SETTINGS))
"""The variables :func:`data_location` reads."""


def data_location(
    queue_url: str | None = None,
    queue_dir: str | None = None,
    idempotency_dir: str | None = None,
    dlq_dir: str | None = None,
    env: Mapping[str, str] = os.environ,
) -> Location:
    """Where the data is, from the flags (None: not given) and ``env``: the one place that
    turns them into a :class:`~tracemind.backend.location.Location`.

    The location is ``--queue-url``, else ``TM_QUEUE_URL``, else the data root
    ``$TM_DATA_DIR``, else ``data`` under the current directory. For a file location each of
    its three directories may be set apart: its flag, else its variable, else the directory the
    location names (a relative path is taken from the current directory). A non-file location
    with a directory setting is a one-line :class:`UsageError`. No pathlib: ``tm enqueue``
    calls this."""
    url = queue_url or env.get("TM_QUEUE_URL")
    base = Location.parse(url) if url else None
    flags = (queue_dir, idempotency_dir, dlq_dir)
    if base is not None and not base.is_file:
        given = [flag for (_, flag, _), value in zip(DIR_SETTINGS, flags, strict=True) if value]
        given += [var for _, _, var in DIR_SETTINGS if env.get(var)]
        if given:
            raise UsageError(
                f"{given[0]} applies to a file location, not to {base.redacted()} "
                "(give one or the other)"
            )
        return base
    if base is None:
        root = env.get("TM_DATA_DIR") or "data"
        named = tuple(os.path.join(root, name) for name in FILE_DIR_NAMES)
    else:
        named = base.file_dirs()
    chosen = [
        flag or env.get(var) or default
        for flag, (_, _, var), default in zip(flags, DIR_SETTINGS, named, strict=True)
    ]
    absolute = [path if os.path.isabs(path) else os.path.join(os.getcwd(), path) for path in chosen]
    return Location.for_file_dirs(*absolute)


def _file_dirs(text: str, rest: str) -> tuple[str, str, str]:
    path, _, query = rest.partition("?")
    root = _unquote(path)
    if not root.startswith("/") or "\0" in root:
        raise UsageError(f"queue location {text!r}: a file location is file:///absolute/path")
    root = os.path.normpath(root)
    dirs = {name: os.path.join(root, name) for name in FILE_DIR_NAMES}
    for item in query.split("&") if query else ():
        name, eq, value = item.partition("=")
        where = _unquote(value)
        if name not in dirs or not eq:
            raise UsageError(
                f"queue location {text!r}: unknown query key {name!r} "
                "(a file location knows queue=, idempotency= and dlq=)"
            )
        if not where.startswith("/") or "\0" in where:
            raise UsageError(f"queue location {text!r}: {name}= needs an absolute path")
        dirs[name] = os.path.normpath(where)
    return dirs["queue"], dirs["idempotency"], dirs["dlq"]


_PLAIN_URL = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_:/?=")
"""The characters of a Redis URL :func:`_plain_redis_parts` reads without ``urllib``."""


def _plain_redis_parts(text: str) -> dict[str, object] | None:
    """The parts of the usual URL, ``redis[s]://host[:port][/db][?prefix=word]`` with plain
    characters only (no user or password, no IPv6 or IDNA host, no escapes), read by hand: the
    same as :func:`_redis_parts` reads it, without importing ``urllib.parse`` (and with it
    ``ipaddress``) on ``tm enqueue``'s path. None for any other text: ``urllib`` reads it."""
    if not _PLAIN_URL.issuperset(text):
        return None
    scheme, _, rest = text.partition("://")
    rest, _, query = rest.partition("?")
    hostport, _, path = rest.partition("/")
    host, colon, port_text = hostport.partition(":")
    db_text = path.strip("/") or "0"
    if not host or "/" in db_text or not db_text.isdigit():
        return None
    if colon and not (port_text.isdigit() and 0 < int(port_text) <= 65535):
        return None
    prefix = "tm"
    if query:
        name, eq, value = query.partition("=")
        if name != "prefix" or not eq or not value or "=" in value:
            return None
        prefix = value
    return {
        "host": host.lower(),
        "port": int(port_text) if port_text else 6379,
        "db": int(db_text),
        "username": None,
        "password": None,
        "prefix": prefix,
        "tls": scheme.lower() == "rediss",
    }


def _redis_parts(text: str) -> dict[str, object]:
    plain = _plain_redis_parts(text)
    if plain is not None:
        return plain
    from urllib.parse import parse_qs, unquote, urlsplit

    try:
        parts = urlsplit(text)
        port = parts.port or 6379
        host = parts.hostname
    except ValueError as exc:
        raise UsageError(f"queue location {_redact_any(text)!r}: {exc}") from None
    if not host:
        raise UsageError(f"queue location {_redact_any(text)!r}: no host (redis://host:port/db)")
    db_text = parts.path.strip("/") or "0"
    if not db_text.isdigit():
        raise UsageError(f"queue location {_redact_any(text)!r}: the database is a number")
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - {"prefix"})
    if unknown:
        raise UsageError(
            f"queue location {_redact_any(text)!r}: unknown query key {unknown[0]!r} "
            "(a Redis location knows prefix=)"
        )
    prefix = query.get("prefix", ["tm"])[-1]
    if not prefix or any(c.isspace() for c in prefix):
        raise UsageError(f"queue location {_redact_any(text)!r}: prefix= must be a word")
    return {
        "host": host,
        "port": port,
        "db": int(db_text),
        "username": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password is not None else None,
        "prefix": prefix,
        "tls": parts.scheme.lower() == "rediss",
    }


def _redact_any(text: str) -> str:
    return Location("redis", text).redacted()


_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789/_.-~+:,@")


def _quote(path: str) -> str:
    if all(c in _SAFE for c in path):
        return path
    return "".join(
        c if c in _SAFE else "".join(f"%{b:02X}" for b in c.encode("utf-8", "surrogateescape"))
        for c in path
    )


def _unquote(text: str) -> str:
    if "%" not in text:
        return text
    from urllib.parse import unquote

    return unquote(text, errors="surrogateescape")
