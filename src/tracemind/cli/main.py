"""Entry point of ``tm``: parse, dispatch, and turn user errors into one line and an exit code.

Each command group lives in its own module exposing ``register(subparsers)``; handlers take the
parsed arguments and return the exit code. Modules import their heavy dependencies inside the
handlers, so ``tm enqueue`` loads neither the worker pool nor the status server.

``tm enqueue`` and ``tm run`` are what scripts start over and over, and importing argparse and
building its parser costs ~6 ms, a fifth of such a process. So their plain spellings — the
command, its one argument and its options written out in full (``tm enqueue FLOW -i JSON``) —
are read by the command's :class:`~tracemind.cli.common.QuickForm` instead, which yields the
arguments argparse would. Anything else (help, ``--opt=value``, abbreviations, a value starting
with ``-``, a repeated or unknown option, a mistake) goes to argparse, the one judge of what the
command line means (``tests/cli/test_quick_parse.py`` holds both to the same answers).
"""

from __future__ import annotations

import sys
from types import SimpleNamespace

TYPE_CHECKING = False
if TYPE_CHECKING:
    from argparse import Namespace
    from collections.abc import Sequence
    from typing import Any

QUICK_COMMANDS = ("run", "enqueue")
"""The commands with a quick form (``tracemind.cli.submit.QUICK_FORMS``)."""


def main(argv: Sequence[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    args = parse_quick(words) or parse_full(words)
    # Imported once the arguments are good: `tm --help` and usage errors end above.
    from tracemind.errors import TraceMindError
    from tracemind.fsutil import share_with_group

    share_with_group()
    try:
        use_app_dirs(args)
        return int(args.handler(args))
    except TraceMindError as error:
        if args.debug:
            raise
        report(str(error), error.exit_code, as_json=bool(getattr(args, "json", False)))
        return error.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1


def report(message: str, exit_code: int, *, as_json: bool) -> None:
    """A user error: ``tm: error: <message>`` on stderr, or with ``--json`` the object
    ``{"error": <message>, "exit": <code>}`` on stdout (what scripts parse)."""
    if as_json:
        import json

        sys.stdout.write(json.dumps({"error": message, "exit": exit_code}) + "\n")
        sys.stdout.flush()
    else:
        print(f"tm: error: {message}", file=sys.stderr)


def use_app_dirs(args: Any) -> None:
    """Make ``--app-dir`` (else ``TM_APP_DIR``) where this process and its children import
    hooks from: first on ``sys.path``, and exported as ``TM_APP_DIR`` (absolute) so that a
    daemon started here, and its workers, inherit them. A missing directory is a UsageError."""
    import os

    flags = getattr(args, "app_dir", None)
    if not flags and not os.environ.get("TM_APP_DIR"):
        return
    from tracemind import config

    dirs = config.app_dirs(flags)
    os.environ["TM_APP_DIR"] = os.pathsep.join(dirs)
    if os.getcwd() not in sys.path:  # the current directory comes right after the app dirs
        sys.path.insert(0, os.getcwd())
    for directory in reversed(dirs):
        if directory in sys.path:
            sys.path.remove(directory)
        sys.path.insert(0, directory)


def parse_quick(words: Sequence[str]) -> SimpleNamespace | None:
    """The arguments in ``words`` if they are the plain spelling of ``tm [--debug] run ...`` or
    ``tm [--debug] enqueue ...``, else None (then argparse parses them)."""
    debug = bool(words) and words[0] == "--debug"
    if debug:
        words = words[1:]
    if not words or words[0] not in QUICK_COMMANDS:
        return None
    from tracemind.cli.submit import QUICK_FORMS

    command = words[0]
    values = QUICK_FORMS[command].parse(words[1:])
    return None if values is None else SimpleNamespace(command=command, debug=debug, **values)


def parse_full(words: Sequence[str]) -> Namespace:
    """The arguments in ``words`` as argparse reads them (it exits 2 with one line if they are
    wrong, 0 after ``--help``)."""
    from tracemind.cli.parser import build_parser

    command = next((w for w in words if not w.startswith("-")), None)
    return build_parser(command, json_errors="--json" in words).parse_args(words)
