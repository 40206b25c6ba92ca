"""What a daemon is made of: its settings, and the components it runs beside its workers.

A module of its own so that the daemon (:mod:`tracemind.daemon.service`) and the components it
builds (:mod:`tracemind.daemon.components`) both depend on it, and not on each other.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tracemind.config import DataDirs, app_dirs


class Component(Protocol):
    """Something the daemon runs beside its workers (the status server, the triggers)."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def describe(self) -> dict[str, Any]: ...


@dataclass
class DaemonSettings:
    dirs: DataDirs
    state_dir: Path
    workers: int
    runtime: str
    lease_s: float
    drain_timeout_s: float
    durable: bool
    log_file: Path | None  # None: inherit stdout
    status_bind: str | None = None
    triggers_config: Path | None = None
    instance_id: str = field(default_factory=lambda: secrets.token_hex(6))
    app_dirs: tuple[str, ...] = field(default_factory=lambda: app_dirs(check=False))
