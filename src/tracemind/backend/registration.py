"""What a daemon or a worker pool registers as serving a location (any backend's registry
keeps it: :class:`tracemind.backend.protocol.Registry`)."""

from __future__ import annotations

import os

TYPE_CHECKING = False  # (`tm enqueue` reads the registry: no `typing` on its path)
if TYPE_CHECKING:
    from typing import Any

STALE_S = 10.0
"""A heartbeat older than this is not live (servers beat every second)."""
FORGET_S = 86_400.0
"""A registration older than this is removed by the next process that registers."""


def registration(
    instance_id: str,
    *,
    kind: str,
    state_dir: str | None,
    started_s: float,
    workers: dict[str, int],
    draining: bool,
) -> dict[str, Any]:
    """A registration of this process: a ``daemon`` or a ``pool``."""
    import socket

    from tracemind import __version__
    from tracemind.clock import iso_utc

    return {
        "instance_id": instance_id,
        "kind": kind,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "state_dir": state_dir,
        "started_at": iso_utc(started_s),
        "workers": workers,
        "draining": draining,
        "version": __version__,
    }
