"""Where the data is, as a daemon's ``daemon.json`` records it.

A daemon records its location as ``queue_url``, redacted (a file never holds a password). A
daemon started by an earlier version recorded its three directories as ``dirs`` instead; both
are read. On ``tm enqueue``'s path: no pathlib, no typing.
"""

from __future__ import annotations

from tracemind.backend.location import Location
from tracemind.errors import UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any


def recorded_location(meta: Mapping[str, Any]) -> Location | None:
    """The location ``meta`` (a ``daemon.json``) records, or None when it records none that
    can be read (absent, damaged, or of a scheme this version does not know). A recorded Redis
    location has no password: :meth:`Location.password` takes it from ``TM_REDIS_PASSWORD``."""
    text = meta.get("queue_url")
    try:
        if isinstance(text, str):
            return Location.parse_redacted(text)
        dirs = meta.get("dirs")
        if isinstance(dirs, dict):
            paths = [dirs.get(name) for name in ("queue", "idempotency", "dlq")]
            absolute = [path for path in paths if isinstance(path, str) and path.startswith("/")]
            if len(absolute) == len(paths):
                return Location.for_file_dirs(*absolute)
    except UsageError:
        return None
    return None
