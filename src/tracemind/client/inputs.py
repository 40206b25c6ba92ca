"""Checking what a caller submits: inputs, keys, and when a task becomes due (``--delay``,
``--at``). Shared by the client and ``tm enqueue``; light to import (``datetime`` only for an
``--at`` time given as text)."""

from __future__ import annotations

import json
import math

from tracemind.errors import UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from datetime import datetime
    from typing import Any

_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
MAX_DELAY_S = 10 * 365 * 86400.0
"""The longest delay accepted (ten years): anything longer is a typo (ms meant as s, …)."""


def check_input(value: Any, what: str) -> dict[str, Any]:
    """``value`` if it is a JSON object (a dict of JSON values, keys strings, numbers finite,
    strings valid Unicode); else a one-line :class:`UsageError` naming ``what``."""
    if not isinstance(value, dict):
        raise UsageError(f"{what}: must be a JSON object (a dict), got {type(value).__name__}")
    try:
        json.dumps(value, allow_nan=False, ensure_ascii=False).encode("utf-8")
    except (TypeError, ValueError, UnicodeEncodeError) as exc:
        raise UsageError(f"{what}: not JSON ({exc})") from None
    return value


def check_key(key: str, what: str) -> str:
    """``key`` if it is a string of valid Unicode (an idempotency key); else a UsageError."""
    if not isinstance(key, str):
        raise UsageError(f"{what}: an idempotency key is a string, got {type(key).__name__}")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UsageError(
            f"{what}: not valid UTF-8 text (a lone surrogate at character {exc.start + 1})"
        ) from None
    return key


def key_from_field(state: dict[str, Any], field: str, what: str) -> str:
    """The idempotency key an input carries in ``field``: a string as is, anything else as its
    JSON text (so ``{"id": 7}`` and ``{"id": "7"}`` are different keys)."""
    if field not in state:
        raise UsageError(f"{what}: no field {field!r} for the key")
    raw = state[field]
    return raw if isinstance(raw, str) else json.dumps(raw, sort_keys=True)


def parse_delay(text: str) -> float:
    """Seconds from ``30s``, ``5m``, ``1h``, ``2d``, ``250ms`` or a plain number of seconds."""
    stripped = text.strip().lower()
    number, scale = stripped, 1.0
    for unit in ("ms", "s", "m", "h", "d"):  # "ms" before "m" and "s"
        if stripped.endswith(unit):
            number, scale = stripped[: -len(unit)], _UNIT_S[unit]
            break
    try:
        seconds = float(number) * scale
    except ValueError:
        raise UsageError(
            f"--delay {text!r}: expected a duration such as 30s, 5m, 1h, 2d or 250ms"
        ) from None
    return check_delay(seconds, f"--delay {text!r}")


def check_delay(seconds: float, what: str) -> float:
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise UsageError(f"{what}: a delay is a number of seconds, got {type(seconds).__name__}")
    if not math.isfinite(seconds) or seconds < 0 or seconds > MAX_DELAY_S:
        raise UsageError(f"{what}: a delay must be from 0 to {MAX_DELAY_S:g} seconds")
    return float(seconds)


def parse_at(value: str | float | datetime, what: str = "--at") -> float:
    """Epoch seconds from an ISO-8601 time with a zone (``2026-12-24T18:00:00Z``,
    ``…+01:00``), an aware :class:`~datetime.datetime`, or epoch seconds."""
    if isinstance(value, bool):
        raise UsageError(f"{what}: expected a time, got a bool")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise UsageError(f"{what}: not a finite time")
        return float(value)
    from datetime import datetime

    if isinstance(value, str):
        text = value.strip()
        try:
            moment = datetime.fromisoformat(text[:-1] + "+00:00" if text[-1:] in "zZ" else text)
        except ValueError:
            raise UsageError(
                f"{what} {value!r}: expected an ISO-8601 time such as 2026-12-24T18:00:00Z"
            ) from None
    elif isinstance(value, datetime):
        moment = value
    else:
        raise UsageError(f"{what}: expected an ISO-8601 string, a datetime or epoch seconds")
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise UsageError(
            f"{what} {value!s}: give a time zone (Z for UTC, or an offset such as +01:00)"
        )
    return moment.timestamp()


def due_time(now_s: float, delay_s: float | None, at: Any) -> float | None:
    """When a task submitted at ``now_s`` becomes due: ``now_s + delay_s``, or ``at``; None
    (now) when neither is given. Giving both is a UsageError."""
    if delay_s is not None and at is not None:
        raise UsageError("give a delay or a time (--delay or --at), not both")
    if delay_s is not None:
        return now_s + check_delay(delay_s, "delay_s")
    if at is not None:
        return parse_at(at)
    return None
