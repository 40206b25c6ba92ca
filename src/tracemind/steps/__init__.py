"""Built-in steps, usable as hooks (``tracemind.steps.echo`` ...) and in tests and smoke runs.

Each has the hook signature ``fn(ctx, state)``; a returned dict is merged into the state.
"""

from __future__ import annotations

import time
from typing import Any

__all__ = ["echo", "fail", "greet", "sleep"]


def echo(ctx: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of the state (merging it back changes nothing)."""
    return dict(state)


def sleep(ctx: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
    """Sleep ``state["seconds"]`` seconds (default 0); a stand-in for slow or hung work."""
    time.sleep(float(state.get("seconds", 0)))
    return {}


def fail(ctx: dict[str, Any], state: dict[str, Any]) -> None:
    """Raise ``RuntimeError(state["message"])`` (default "fail step"); exercises retries + DLQ."""
    raise RuntimeError(state.get("message", "fail step"))


def greet(ctx: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
    """Return ``{"greeting": "Hello, <state["name"] or world>!"}``."""
    return {"greeting": f"Hello, {state.get('name', 'world')}!"}
