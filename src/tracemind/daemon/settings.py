"""What a daemon is made of: its settings, and the components it runs beside its workers.

A module of its own so that the daemon (:mod:`tracemind.daemon.service`) and the components it
builds (:mod:`tracemind.daemon.components`) both depend on it, and not on each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tracemind.backend.location import Location
from tracemind.config import app_dirs
from tracemind.worker.settings import PoolSettings


class Component(Protocol):
    """Something the daemon runs beside its workers (the status server, the triggers)."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def describe(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class DaemonSettings:
    """One daemon: its worker pool (whose settings say where the data is), its state dir and
    the optional components."""

    pool: PoolSettings
    state_dir: Path
    drain_timeout_s: float
    status_bind: str | None = None
    triggers_config: Path | None = None
    app_dirs: tuple[str, ...] = field(default_factory=lambda: app_dirs(check=False))

    @property
    def location(self) -> Location:
        return self.pool.worker.location

    @property
    def instance_id(self) -> str:
        return self.pool.instance_id
