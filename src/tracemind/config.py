"""Where things live and which feature flags are on, resolved from flags and the environment.

Precedence for each data directory: the command-line flag, then its own variable
(``TM_QUEUE_DIR``, ``TM_IDEMPOTENCY_DIR``, ``TM_DLQ_DIR``), then ``$TM_DATA_DIR/<name>``, then
``data/<name>`` under the current directory. The daemon's state directory: ``--state-dir``, then
``TM_DAEMON_STATE_DIR``, then ``$TM_DATA_DIR/state``, then ``~/.trace-mind/daemon``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tracemind.errors import DisabledError, UsageError

TRUTHY = frozenset({"1", "true", "yes", "on"})
DEFAULT_IDEMPOTENCY_TTL_S = 24 * 3600.0


def truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in TRUTHY


@dataclass(frozen=True)
class DataDirs:
    queue: Path
    idempotency: Path
    dlq: Path

    def to_dict(self) -> dict[str, str]:
        return {
            "queue": str(self.queue),
            "idempotency": str(self.idempotency),
            "dlq": str(self.dlq),
        }


def _pick(flag: str | None, var: str, name: str, env: Mapping[str, str]) -> Path:
    if flag:
        return Path(flag).absolute()
    if env.get(var):
        return Path(env[var]).absolute()
    root = env.get("TM_DATA_DIR")
    return (Path(root) / name).absolute() if root else Path("data", name).absolute()


def data_dirs(
    queue_dir: str | None = None,
    idempotency_dir: str | None = None,
    dlq_dir: str | None = None,
    env: Mapping[str, str] = os.environ,
) -> DataDirs:
    return DataDirs(
        queue=_pick(queue_dir, "TM_QUEUE_DIR", "queue", env),
        idempotency=_pick(idempotency_dir, "TM_IDEMPOTENCY_DIR", "idempotency", env),
        dlq=_pick(dlq_dir, "TM_DLQ_DIR", "dlq", env),
    )


def state_dir(explicit: str | None = None, env: Mapping[str, str] = os.environ) -> Path:
    if explicit:
        return Path(explicit).absolute()
    if env.get("TM_DAEMON_STATE_DIR"):
        return Path(env["TM_DAEMON_STATE_DIR"]).absolute()
    if env.get("TM_DATA_DIR"):
        return (Path(env["TM_DATA_DIR"]) / "state").absolute()
    return Path.home() / ".trace-mind" / "daemon"


def durable(env: Mapping[str, str] = os.environ) -> bool:
    """``TM_FILE_QUEUE_V2``: sync data and directory entries so writes survive power loss."""
    return truthy(env.get("TM_FILE_QUEUE_V2"))


def require_daemon_flag(env: Mapping[str, str] = os.environ) -> None:
    if not truthy(env.get("TM_ENABLE_DAEMON")):
        raise DisabledError(
            "daemon mode is disabled: set TM_ENABLE_DAEMON=1 to use it "
            "(see docs/daemon.md); nothing was started or enqueued"
        )


def idempotency_ttl_s(env: Mapping[str, str] = os.environ) -> float:
    raw = env.get("TM_IDEMPOTENCY_TTL_S")
    if not raw:
        return DEFAULT_IDEMPOTENCY_TTL_S
    try:
        ttl = float(raw)
    except ValueError:
        raise UsageError(f"TM_IDEMPOTENCY_TTL_S must be a number of seconds, got {raw!r}") from None
    if ttl < 0:
        raise UsageError(f"TM_IDEMPOTENCY_TTL_S must not be negative, got {raw!r}")
    return ttl
