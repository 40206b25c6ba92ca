"""Render a trigger's ``input`` template from an event context.

Contract:

- ``{{ name }}`` and dotted ``{{ body.order.id }}`` (a numeric part indexes a list) look a value up
  in the context; whitespace inside the braces is optional.
- A string that is exactly one placeholder becomes the value itself, keeping its JSON type (an
  object stays an object, a number a number).
- Placeholders inside a longer string render as text: strings as they are, anything else as JSON
  (``null`` for a missing name).
- A missing name renders as ``None`` / ``null``; rendering never raises.
- Dicts and lists are rendered recursively (values only; keys are taken literally).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

_PLACEHOLDER = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_-]+)*")
_MISSING = object()


def render(template: Any, context: Mapping[str, Any]) -> Any:
    """The template with every placeholder replaced (see the module docstring)."""
    if isinstance(template, str):
        return _render_string(template, context)
    if isinstance(template, Mapping):
        return {key: render(value, context) for key, value in template.items()}
    if isinstance(template, list):
        return [render(item, context) for item in template]
    return template


def lookup(name: str, context: Mapping[str, Any]) -> Any:
    """The value a dotted name refers to, or None when any part of it is missing."""
    value = _lookup(name, context)
    return None if value is _MISSING else value


def placeholders(template: Any, where: str = "input") -> Iterator[tuple[str, str]]:
    """Every ``(location, name)`` in a template, e.g. ``("input.order", "body.id")``."""
    if isinstance(template, str):
        for match in _PLACEHOLDER.finditer(template):
            yield where, match.group(1)
    elif isinstance(template, Mapping):
        for key, value in template.items():
            yield from placeholders(value, f"{where}.{key}")
    elif isinstance(template, list):
        for index, item in enumerate(template):
            yield from placeholders(item, f"{where}[{index}]")


def is_valid_name(name: str) -> bool:
    """Whether a placeholder's text is a (dotted) name that :func:`lookup` understands."""
    return _NAME.fullmatch(name) is not None


def _render_string(text: str, context: Mapping[str, Any]) -> Any:
    whole = _PLACEHOLDER.fullmatch(text.strip())
    if whole is not None:
        return lookup(whole.group(1), context)
    return _PLACEHOLDER.sub(lambda match: _as_text(lookup(match.group(1), context)), text)


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def _lookup(name: str, context: Mapping[str, Any]) -> Any:
    if not is_valid_name(name):
        return _MISSING
    value: Any = context
    for part in name.split("."):
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return _MISSING
    return value
