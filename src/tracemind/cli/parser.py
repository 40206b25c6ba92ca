"""The ``tm`` command line as argparse reads it: the list of commands, and each group's parsers.

``COMMANDS`` is the table of contents: every command, the module under ``tracemind.cli`` that
registers its arguments, and the line ``tm --help`` shows for it. A command's group is imported
and registered only when that command runs; ``tm --help`` (or a command line without a known
command) needs the table alone.
"""

from __future__ import annotations

import argparse
import importlib

from tracemind import __version__

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn

COMMANDS = {
    "run": ("submit", "run a flow now (or --detached: enqueue it for the daemon)"),
    "enqueue": ("submit", "enqueue a flow for the workers"),
    "queue": ("inspect", "inspect the queue"),
    "task": ("inspect", "inspect one task"),
    "dlq": ("dlq", "the dead-letter queue"),
    "workers": ("workers", "run a worker pool in the foreground"),
    "daemon": ("daemon", "the background daemon (needs TM_ENABLE_DAEMON=1)"),
    "health": ("health", "probe the daemon's status endpoint: exit 0 healthy, 1 not"),
    "triggers": ("triggers", "cron, filesystem and webhook triggers that enqueue flows"),
}
"""command → (its group module under tracemind.cli, its summary), in ``tm --help`` order."""


class OneLineParser(argparse.ArgumentParser):
    """Usage errors are one line (and exit 2), like every other user error of ``tm``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser for running ``command``: its group's parsers, or for no (or an unknown)
    command the bare list of commands, which is all ``tm --help`` shows (start-up time)."""
    parser = OneLineParser(
        prog="tm",
        description="TraceMind: run flows now, or queue them for the daemon's workers.",
    )
    parser.add_argument("--version", action="version", version=f"tm {__version__}")
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks for errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    if command in COMMANDS:
        group, _ = COMMANDS[command]
        importlib.import_module(f"tracemind.cli.{group}").register(commands)
    else:
        for name, (_, summary) in COMMANDS.items():
            commands.add_parser(name, help=summary)
    return parser
