"""The Redis backend (``redis://``, ``rediss://``): a stream with a consumer group for due tasks,
sorted sets for delayed tasks and lease deadlines, one Lua script per state change (see
docs/queue-format.md, "Redis backend"). The only package that imports the ``redis`` client:
:func:`tracemind.backend.open_backend` imports it for a Redis location only."""

from __future__ import annotations

from tracemind.backend.redis.backend import RedisBackend

__all__ = ["RedisBackend"]
