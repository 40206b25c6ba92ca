"""A minimal user step: greet ``state["name"]`` and say where the greeting was made."""

from __future__ import annotations

import socket
from typing import Any


def run(ctx: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
    """Return ``{"greeting": ..., "greeted_by": <hostname>}``; the runner merges it into the state.

    ``ctx`` carries the task's ids (``task_id``, ``flow_id``, ``attempt``, ``step_id``); the
    hostname shows which side ran the task (the container's id when the daemon runs in Docker).
    """
    name = state.get("name") or "world"
    return {"greeting": f"Hello, {name}!", "greeted_by": socket.gethostname()}
