"""The ``tm`` command line as argparse reads it: the list of commands, and each group's parsers.

``COMMANDS`` is the table of contents: every command, the module under ``tracemind.cli`` that
registers its arguments, and the line ``tm --help`` shows for it. A command's group is imported
and registered only when that command runs; ``tm --help`` (or a command line without a known
command) needs the table alone.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from tracemind import __version__

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn

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
    "init": ("scaffold", "write a runnable starter project (a flow, its steps, triggers)"),
    "completion": ("scaffold", "print a shell completion script (bash or zsh)"),
}
"""command → (its group module under tracemind.cli, its summary), in ``tm --help`` order."""


EXIT_USAGE = 2


class _HelpFormatter(argparse.HelpFormatter):
    """Keeps each command's summary on its line: argparse sizes the name column without the
    extra indent it gives subcommands, so a name as long as ``completion`` wrapped."""

    def add_argument(self, action: argparse.Action) -> None:
        super().add_argument(action)
        if isinstance(action, argparse._SubParsersAction):
            indent = self._current_indent + self._indent_increment
            for sub in action._get_subactions():
                length = len(self._format_action_invocation(sub)) + indent
                self._action_max_length = max(self._action_max_length, length)


class OneLineParser(argparse.ArgumentParser):
    """Usage errors are one line (and exit 2), like every other user error of ``tm``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class JsonErrorParser(OneLineParser):
    """For a command line with ``--json``: the usage error is ``{"error", "exit"}`` on stdout."""

    def error(self, message: str) -> NoReturn:
        import json

        error = {"error": f"{message} (see {self.prog} --help)", "exit": EXIT_USAGE}
        sys.stdout.write(json.dumps(error) + "\n")
        self.exit(EXIT_USAGE)


def build_parser(
    command: str | None = None, *, json_errors: bool = False
) -> argparse.ArgumentParser:
    """The parser for running ``command``: its group's parsers, or for no (or an unknown)
    command the bare list of commands, which is all ``tm --help`` shows (start-up time).
    Every verb takes ``--json`` (added here where its group does not declare it): at least its
    errors are then JSON on stdout. ``json_errors``: usage errors too (subparsers are made of
    the same class as their parent)."""
    parser_class = JsonErrorParser if json_errors else OneLineParser
    parser: argparse.ArgumentParser = parser_class(
        prog="tm",
        description="TraceMind: run flows now, or queue them for the daemon's workers.",
    )
    parser.add_argument("--version", action="version", version=f"tm {__version__}")
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks for errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    if command in COMMANDS:
        group, _ = COMMANDS[command]
        importlib.import_module(f"tracemind.cli.{group}").register(commands)
        for verb in leaf_parsers(commands):
            if not any("--json" in action.option_strings for action in verb._actions):
                verb.add_argument("--json", action="store_true", help="errors as JSON on stdout")
    else:
        for name, (_, summary) in COMMANDS.items():
            commands.add_parser(name, help=summary)
    return parser


def leaf_parsers(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> list[argparse.ArgumentParser]:
    """The parsers that run a handler (``tm task wait``, ``tm init``…) under ``commands``."""
    leaves = []
    for parser in dict.fromkeys(commands.choices.values()):
        nested = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if nested:
            leaves += leaf_parsers(nested[0])
        else:
            leaves.append(parser)
    return leaves
