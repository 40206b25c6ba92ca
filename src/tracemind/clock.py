"""Wall-clock time, injected: everything stored on disk is epoch seconds or ISO-8601 UTC."""

from __future__ import annotations

import time
from collections.abc import Callable

Clock = Callable[[], float]
"""Returns the current wall-clock time in epoch seconds (``time.time`` in production)."""

system_clock: Clock = time.time


def iso_utc(epoch_s: float | None) -> str | None:
    """``2026-11-26T13:37:59.123Z`` for an epoch time, None for None."""
    if epoch_s is None:
        return None
    from datetime import UTC, datetime  # not at import: `tm enqueue` never formats a time

    stamp = datetime.fromtimestamp(epoch_s, tz=UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")
