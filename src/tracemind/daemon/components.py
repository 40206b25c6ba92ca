"""The optional components a daemon runs beside its workers, built from its settings."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tracemind.daemon.service import Component, DaemonSettings


def build_components(settings: DaemonSettings, stores: Any) -> dict[str, Component]:
    return {}


def validate_triggers(path: Path) -> None:
    """Raise UsageError (exit 2) when the triggers config is invalid; nothing starts then."""
    from tracemind.errors import UsageError

    if not path.is_file():
        raise UsageError(f"--triggers-config {path}: no such file")
