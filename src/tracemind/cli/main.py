"""Entry point of ``tm``: parse, dispatch, and turn user errors into one line and an exit code.

Each command group lives in its own module exposing ``register(subparsers)``; handlers take the
parsed arguments and return the exit code. Modules import their heavy dependencies inside the
handlers, so ``tm enqueue`` loads neither the worker pool nor the status server.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from tracemind import __version__
from tracemind.cli import daemon, dlq, health, inspect, submit, triggers, workers
from tracemind.errors import TraceMindError


class OneLineParser(argparse.ArgumentParser):
    """Usage errors are one line (and exit 2), like every other user error of ``tm``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="tm",
        description="TraceMind: run flows now, or queue them for the daemon's workers.",
    )
    parser.add_argument("--version", action="version", version=f"tm {__version__}")
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks for errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in (submit, inspect, dlq, workers, daemon, health, triggers):
        group.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from tracemind.fsutil import share_with_group

    share_with_group()
    parser = build_parser()
    args = parser.parse_args(argv)
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
