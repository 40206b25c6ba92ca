"""Typed reads of one trigger's mapping that collect problems instead of raising."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any


class FieldReader:
    """Reads keys of one trigger entry; every problem becomes one line in ``problems``.

    A read returns the default (or None) when the key is missing or invalid, so one pass reports
    every problem of an entry. :meth:`finish` reports the keys nobody read as unknown.
    """

    def __init__(self, raw: Mapping[str, Any], label: str, problems: list[str]) -> None:
        self.raw = raw
        self.label = label
        self.problems = problems
        self._known: set[str] = set()

    def problem(self, message: str) -> None:
        self.problems.append(f"{self.label}: {message}")

    def has(self, key: str) -> bool:
        self._known.add(key)
        return key in self.raw and self.raw[key] is not None

    def string(self, key: str, default: str | None = None, *, required: bool = False) -> str | None:
        if not self.has(key):
            if required:
                self.problem(f"missing required key '{key}'")
            return default
        value = self.raw[key]
        if not isinstance(value, str) or not value.strip():
            self.problem(f"{key}: expected a non-empty string, got {_shown(value)}")
            return default
        return value.strip()

    def boolean(self, key: str, default: bool = False) -> bool:
        if not self.has(key):
            return default
        value = self.raw[key]
        if not isinstance(value, bool):
            self.problem(f"{key}: expected true or false, got {_shown(value)}")
            return default
        return value

    def number(self, key: str, default: float, *, minimum: float) -> float:
        if not self.has(key):
            return default
        value = self.raw[key]
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.problem(f"{key}: expected a number, got {_shown(value)}")
            return default
        if value < minimum:
            self.problem(f"{key}: must be at least {minimum:g}, got {value:g}")
            return default
        return float(value)

    def integer(self, key: str, default: int, *, minimum: int, maximum: int) -> int:
        if not self.has(key):
            return default
        value = self.raw[key]
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(f"{key}: expected an integer, got {_shown(value)}")
            return default
        if not minimum <= value <= maximum:
            self.problem(f"{key}: must be between {minimum} and {maximum}, got {value}")
            return default
        return value

    def mapping(self, key: str) -> dict[str, Any]:
        if not self.has(key):
            return {}
        value = self.raw[key]
        if not isinstance(value, Mapping):
            self.problem(f"{key}: expected a mapping (the task input), got {_shown(value)}")
            return {}
        return dict(value)

    def finish(self, allowed_elsewhere: Iterable[str] = ()) -> None:
        """Report keys that were never read (and are not in ``allowed_elsewhere``) as unknown."""
        known = self._known | set(allowed_elsewhere)
        for key in self.raw:
            if key not in known:
                close = difflib.get_close_matches(str(key), sorted(known), n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                self.problem(f"unknown key '{key}'{hint}")


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
