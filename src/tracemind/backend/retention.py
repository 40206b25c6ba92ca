"""What every backend forgets, and when: the retention policy (docs/queue-format.md,
"Retention"). How a backend removes records is its own (``tracemind.backend.file.retention``,
``tracemind.backend.redis``); when it may is decided here, once.

A result TTL below :data:`MIN_RESULT_TTL_S` is refused: a stale copy of a task left by a crash
must still find its result when its lease lapses, and leases are far shorter than that.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from tracemind.config import idempotency_ttl_s, seconds_setting
from tracemind.errors import UsageError

DAY_S = 86_400.0
DEFAULT_RESULT_TTL_S = 7 * DAY_S
DEFAULT_DLQ_AUDIT_TTL_S = 30 * DAY_S
QUARANTINE_TTL_S = 7 * DAY_S
TEMPORARY_TTL_S = 3_600.0
MIN_RESULT_TTL_S = 3_600.0
"""Far longer than any lease plus a recovery round: see the module docstring."""
KINDS = ("results", "keys", "dlq_audit", "quarantine", "temporaries")


@dataclass(frozen=True)
class RetentionPolicy:
    result_ttl_s: float = DEFAULT_RESULT_TTL_S
    key_ttl_s: float = DAY_S
    dlq_audit_ttl_s: float = DEFAULT_DLQ_AUDIT_TTL_S

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> RetentionPolicy:
        """The policy the environment sets (the key TTL is ``TM_IDEMPOTENCY_TTL_S``);
        :class:`UsageError` (one line) for a bad value."""
        key_ttl_s = idempotency_ttl_s(env)
        result_ttl_s = seconds_setting("TM_RESULT_TTL_S", DEFAULT_RESULT_TTL_S, env)
        audit_ttl_s = seconds_setting("TM_DLQ_AUDIT_TTL_S", DEFAULT_DLQ_AUDIT_TTL_S, env)
        if result_ttl_s < MIN_RESULT_TTL_S:
            raise UsageError(
                f"TM_RESULT_TTL_S must be at least {MIN_RESULT_TTL_S:g} s (a stale copy of a "
                f"task must find its result), got {result_ttl_s:g}"
            )
        if result_ttl_s < key_ttl_s:
            raise UsageError(
                f"TM_RESULT_TTL_S ({result_ttl_s:g} s) must not be shorter than "
                f"TM_IDEMPOTENCY_TTL_S ({key_ttl_s:g} s): a key must not outlive its result"
            )
        return cls(result_ttl_s, key_ttl_s, audit_ttl_s)
