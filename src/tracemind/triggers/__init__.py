"""Trigger adapters: cron, filesystem and webhook events that *submit* tasks (never run them).

Typical use (the daemon and ``tm triggers run`` do this)::

    config = load_config("triggers.yaml")              # TriggerConfigError: exit 2
    runner = TriggerRunner(config, submitter, state_dir=state)
    runner.start()                                     # FlowError 2 / TriggerStartError 1
    runner.stats()                                     # the `ps` entries
    runner.stop()
"""

from tracemind.triggers.config import ConfigReport, check_config, load_config
from tracemind.triggers.cron import CronError, Schedule, parse_schedule
from tracemind.triggers.dispatch import SubmitOutcome, Submitter
from tracemind.triggers.model import (
    CronSpec,
    FilesystemSpec,
    TriggerConfigError,
    TriggersConfig,
    TriggerStartError,
    WebhookSpec,
)
from tracemind.triggers.runner import TriggerRunner
from tracemind.triggers.sample import write_sample
from tracemind.triggers.template import render

__all__ = [
    "ConfigReport",
    "CronError",
    "CronSpec",
    "FilesystemSpec",
    "Schedule",
    "SubmitOutcome",
    "Submitter",
    "TriggerConfigError",
    "TriggerRunner",
    "TriggerStartError",
    "TriggersConfig",
    "WebhookSpec",
    "check_config",
    "load_config",
    "parse_schedule",
    "render",
    "write_sample",
]
