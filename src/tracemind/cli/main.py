"""Entry point of ``tm``: parse, dispatch, and turn user errors into one line and an exit code.

Each command group lives in its own module exposing ``register(subparsers)``; handlers take the
parsed arguments and return the exit code. Modules import their heavy dependencies inside the
handlers, so ``tm enqueue`` loads neither the worker pool nor the status server.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import NoReturn

from tracemind import __version__
from tracemind.errors import TraceMindError

GROUPS = ("submit", "inspect", "dlq", "workers", "daemon", "health", "triggers")
"""The command-group modules under tracemind.cli, in the order ``tm --help`` lists them."""
COMMAND_GROUP = {
    "run": "submit",
    "enqueue": "submit",
    "queue": "inspect",
    "task": "inspect",
    "dlq": "dlq",
    "workers": "workers",
    "daemon": "daemon",
    "health": "health",
    "triggers": "triggers",
}


class OneLineParser(argparse.ArgumentParser):
    """Usage errors are one line (and exit 2), like every other user error of ``tm``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; given the command about to run, only its group is built (start-up time)."""
    parser = OneLineParser(
        prog="tm",
        description="TraceMind: run flows now, or queue them for the daemon's workers.",
    )
    parser.add_argument("--version", action="version", version=f"tm {__version__}")
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks for errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    groups = [COMMAND_GROUP[command]] if command in COMMAND_GROUP else GROUPS
    for group in groups:
        importlib.import_module(f"tracemind.cli.{group}").register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from tracemind.fsutil import share_with_group

    share_with_group()
    words = sys.argv[1:] if argv is None else list(argv)
    command = next((w for w in words if not w.startswith("-")), None)
    args = build_parser(command).parse_args(words)
    try:
        return int(args.handler(args))
    except TraceMindError as error:
        if args.debug:
            raise
        print(f"tm: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1
