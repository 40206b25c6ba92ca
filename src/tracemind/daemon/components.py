"""The optional components a daemon runs beside its workers, built from its settings."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from tracemind.daemon.state import StateDir

if TYPE_CHECKING:
    from tracemind.daemon.service import Component, DaemonSettings


def build_components(settings: DaemonSettings, stores: Any) -> dict[str, Component]:
    """The status server (``--status-bind``) and the triggers (``--enable-triggers``)."""
    components: dict[str, Component] = {}
    if settings.status_bind:
        from tracemind.status.server import StatusServer

        components["status"] = StatusServer(
            settings.status_bind,
            StateDir(settings.state_dir),
            settings.dirs,
            str(settings.log_file) if settings.log_file else None,
        )
    return components


def validate_triggers(path: Path) -> None:
    """Raise UsageError (exit 2) when the triggers config is invalid; nothing starts then."""
    from tracemind.errors import UsageError

    if not path.is_file():
        raise UsageError(f"--triggers-config {path}: no such file")
