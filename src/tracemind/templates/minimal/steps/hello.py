"""The starter's step: greet ``state["name"]``."""

from __future__ import annotations

from typing import Any


def greet(ctx: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
    """Return ``{"greeting": "Hello, <name>!"}``; the runner merges it into the state.

    ``ctx`` holds ``task_id`` (None under ``tm run``), ``flow_id``, ``attempt`` (1 for the
    first try), ``step_id`` and ``_trigger`` (what a trigger recorded, else None). ``state`` is
    a copy: change it by returning a dict. Raise to fail the attempt (it is retried)."""
    name = state.get("name") or "world"
    return {"greeting": f"Hello, {name}!"}
