"""The optional components a daemon runs beside its workers, built from its settings."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from tracemind.daemon.state import StateDir

if TYPE_CHECKING:
    from tracemind.backend.protocol import Backend
    from tracemind.daemon.settings import Component, DaemonSettings
    from tracemind.triggers import TriggersConfig


def build_components(settings: DaemonSettings, backend: Backend) -> dict[str, Component]:
    """The status server (``--status-bind``) and the triggers (``--triggers-config``)."""
    components: dict[str, Component] = {}
    if settings.status_bind:
        from tracemind.status.server import StatusServer

        components["status"] = StatusServer(
            settings.status_bind,
            StateDir(settings.state_dir),
            settings.location,
            settings.pool.worker.log_file,
        )
    if settings.triggers_config is not None:
        from tracemind import config

        triggers = validate_triggers(settings.triggers_config)
        submitter = backend.submitter(config.idempotency_ttl_s())
        components["triggers"] = TriggersComponent(triggers, submitter, settings.state_dir)
    return components


def validate_triggers(path: Path) -> TriggersConfig:
    """The checked config (flows loaded and validated); TriggerConfigError (exit 2) naming
    every problem otherwise, so nothing starts with an invalid config."""
    from tracemind.flows import load_flow
    from tracemind.triggers import TriggerConfigError, check_config

    report = check_config(path, flow_loader=load_flow)
    if report.config is None:
        raise TriggerConfigError(report.problems)
    return report.config


class TriggersComponent:
    """The trigger adapters inside the daemon: they only submit; the daemon's workers run."""

    def __init__(self, triggers: TriggersConfig, submitter: Any, state_dir: Path) -> None:
        from tracemind.triggers import TriggerRunner

        self.runner = TriggerRunner(triggers, submitter, state_dir=state_dir)

    def start(self) -> None:
        self.runner.start()

    def stop(self) -> None:
        self.runner.stop()

    def describe(self) -> dict[str, Any]:
        return {"triggers": self.runner.stats()}
