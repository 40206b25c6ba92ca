"""Backends: one location (:class:`Location`) opens one :class:`Backend` (see
:mod:`tracemind.backend.protocol` for the contract).

Only this package knows how a location stores its data. ``open_backend`` imports a backend's
module only when a location of its scheme is opened, so the ``file://`` path never imports a
Redis client (and ``tm enqueue`` pays for nothing it does not use).
"""

from __future__ import annotations

import os

from tracemind.backend.location import Location

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

    from tracemind.backend.protocol import Backend
    from tracemind.clock import Clock

__all__ = ["Location", "open_backend"]


def open_backend(
    location: Location | str,
    *,
    durable: bool,
    env: Mapping[str, str] = os.environ,
    clock: Clock | None = None,
) -> Backend:
    """The backend of ``location``. Opening creates and connects nothing: the first writer
    method does. ``durable`` asks for power-loss durability of enqueues and acks; ``env``
    supplies the retention settings (and a Redis password)."""
    if isinstance(location, str):
        location = Location.parse(location)
    if location.is_file:
        from tracemind.backend.file.backend import FileBackend

        return FileBackend(location, durable=durable, env=env, clock=clock)
    try:
        from tracemind.backend.redis import RedisBackend
    except ModuleNotFoundError as exc:
        if exc.name != "redis":
            raise
        from tracemind.errors import UsageError

        raise UsageError(
            f"queue location {location.redacted()}: the Redis backend needs the redis client "
            "(install the project with its redis extra: pip install './checkout[redis]')"
        ) from None
    return RedisBackend(location, durable=durable, env=env, clock=clock)
