"""The keys of each trigger kind: read, check, and turn into a spec constructor."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tracemind.triggers.cron import CronError, parse_schedule, resolve_timezone
from tracemind.triggers.fields import FieldReader
from tracemind.triggers.model import (
    DEFAULT_BIND_HOST,
    DEFAULT_BIND_PORT,
    DEFAULT_INTERVAL_S,
    DEFAULT_MAX_BODY_BYTES,
    MIN_INTERVAL_S,
    SECRET_HEADER,
    AnyTriggerSpec,
    CronSpec,
    FilesystemSpec,
    WebhookSpec,
)

SpecBuilder = Callable[[str, Path, dict[str, Any]], AnyTriggerSpec]

_COMMON_NAMES = frozenset({"trigger_id", "trigger_kind", "event_id", "timestamp"})
CONTEXT_NAMES: dict[str, frozenset[str]] = {
    "cron": _COMMON_NAMES | {"scheduled_at"},
    "filesystem": _COMMON_NAMES | {"path", "name", "parent", "size", "mtime"},
    "webhook": _COMMON_NAMES | {"method", "path", "query", "headers", "body", "body_text"},
}
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def read_kind(
    reader: FieldReader, kind: str, base: Path, environ: Mapping[str, str]
) -> SpecBuilder | None:
    """Read ``kind``'s keys; a constructor taking (id, flow, input), or None on a problem."""
    if kind == "cron":
        return _read_cron(reader)
    if kind == "filesystem":
        return _read_filesystem(reader, base)
    return _read_webhook(reader, environ)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is ``localhost`` or a loopback address (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _read_cron(reader: FieldReader) -> SpecBuilder | None:
    expression = reader.string("cron", required=True)
    timezone = reader.string("timezone", "UTC") or "UTC"
    catch_up = reader.boolean("catch_up")
    try:
        resolve_timezone(timezone)
    except CronError as error:
        reader.problem(f"timezone: {error}")
        return None
    if expression is None:
        return None
    try:
        schedule = parse_schedule(expression, timezone)
    except CronError as error:
        reader.problem(f"cron: {error}")
        return None
    return lambda trigger_id, flow, inputs: CronSpec(
        trigger_id, flow, inputs, expression, timezone, schedule, catch_up
    )


def _read_filesystem(reader: FieldReader, base: Path) -> SpecBuilder | None:
    value = reader.string("path", required=True)
    pattern = reader.string("pattern", "*") or "*"
    recursive = reader.boolean("recursive")
    interval_s = reader.number("interval_seconds", DEFAULT_INTERVAL_S, minimum=MIN_INTERVAL_S)
    ignore_existing = reader.boolean("ignore_existing")
    if "/" in pattern:
        reader.problem(f"pattern: {pattern!r} matches file names only; it cannot contain '/'")
        return None
    if value is None:
        return None
    path = base / Path(value).expanduser()
    if not path.is_dir():
        reader.problem(f"path: directory not found: {value} (resolved to {path})")
        return None
    return lambda trigger_id, flow, inputs: FilesystemSpec(
        trigger_id, flow, inputs, path, pattern, recursive, interval_s, ignore_existing
    )


def _read_webhook(reader: FieldReader, environ: Mapping[str, str]) -> SpecBuilder | None:
    before = len(reader.problems)
    route = reader.string("route", required=True)
    method = (reader.string("method", "POST") or "POST").upper()
    host = reader.string("bind_host", DEFAULT_BIND_HOST) or DEFAULT_BIND_HOST
    port = reader.integer("bind_port", DEFAULT_BIND_PORT, minimum=0, maximum=65535)
    secret_env = reader.string("secret_env")
    allow_unauthenticated = reader.boolean("allow_unauthenticated")
    max_body_bytes = reader.integer(
        "max_body_bytes", DEFAULT_MAX_BODY_BYTES, minimum=1, maximum=2**31
    )
    if route is not None and (not route.startswith("/") or any(c in route for c in "?# ")):
        reader.problem(f"route: {route!r} must be a path starting with '/' (no query or spaces)")
    if method not in METHODS:
        reader.problem(f"method: {method!r} is not one of {', '.join(METHODS)}")
    secret = _secret(reader, secret_env, environ)
    if secret_env is None and not allow_unauthenticated:
        reader.problem(
            f"set secret_env (a shared secret, sent as {SECRET_HEADER}), or declare"
            " allow_unauthenticated: true on a loopback bind_host"
        )
    if secret_env is not None and allow_unauthenticated:
        reader.problem("secret_env and allow_unauthenticated: true contradict each other")
    if allow_unauthenticated and not is_loopback(host):
        reader.problem(
            f"allow_unauthenticated: true is refused on non-loopback bind_host {host};"
            " set secret_env"
        )
    if len(reader.problems) > before or route is None:
        return None
    return lambda trigger_id, flow, inputs: WebhookSpec(
        trigger_id,
        flow,
        inputs,
        route,
        method,
        host,
        port,
        secret_env,
        secret,
        allow_unauthenticated,
        max_body_bytes,
    )


def _secret(reader: FieldReader, name: str | None, environ: Mapping[str, str]) -> str | None:
    if name is None:
        return None
    if not _ENV_NAME.fullmatch(name):
        reader.problem(f"secret_env: {name!r} is not an environment variable name")
        return None
    value = environ.get(name)
    if value is None:
        reader.problem(f"secret_env: environment variable {name} is not set")
        return None
    if not value:
        reader.problem(f"secret_env: environment variable {name} is empty")
        return None
    return value
