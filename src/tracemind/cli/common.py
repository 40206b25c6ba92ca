"""Pieces shared by the commands: the location options, JSON input, output.

On the start-up path of ``tm enqueue``: argparse, pathlib and typing stay out of its imports.
"""

from __future__ import annotations

import functools
import json
import sys

from tracemind.errors import UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Sequence
    from typing import Any

    from tracemind.backend.location import Location
    from tracemind.backend.protocol import Backend, Submitter
    from tracemind.client.api import Client

_INFINITY = float("inf")


def add_queue_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("where the data is (default: $TM_DATA_DIR, else data/)")
    group.add_argument(
        "--queue-url",
        type=_queue_url,
        metavar="URL",
        help="file:///abs/path (a data root) or redis://host:port/db (env TM_QUEUE_URL)",
    )
    group.add_argument("--queue-dir", help="queue directory (env TM_QUEUE_DIR)")
    group.add_argument("--idempotency-dir", help="idempotency directory (env TM_IDEMPOTENCY_DIR)")
    group.add_argument("--dlq-dir", help="dead-letter directory (env TM_DLQ_DIR)")


def _queue_url(text: str) -> str:
    """``--queue-url``: checked while parsing (a usage error, exit 2, names it)."""
    import argparse

    from tracemind.backend.location import Location

    try:
        Location.parse(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def add_app_dir_option(parser: argparse.ArgumentParser, *, where: str) -> None:
    parser.add_argument(
        "--app-dir",
        action="append",
        metavar="DIR",
        help=f"import hooks from DIR first ({where}); repeatable; env TM_APP_DIR "
        "(os.pathsep-separated)",
    )


def location_from(args: argparse.Namespace) -> Location:
    """Where the data is, as the arguments (``--queue-url``, ``--queue-dir``…) and the
    environment say (:func:`tracemind.config.data_location`)."""
    from tracemind.backend.location import data_location

    return data_location(
        getattr(args, "queue_url", None),
        getattr(args, "queue_dir", None),
        getattr(args, "idempotency_dir", None),
        getattr(args, "dlq_dir", None),
    )


def backend_from(args: argparse.Namespace) -> Backend:
    """The backend of the location the arguments name (opening it creates nothing)."""
    from tracemind import config
    from tracemind.backend import open_backend

    return open_backend(location_from(args), durable=config.durable())


def client_from(args: argparse.Namespace) -> Client:
    """The :class:`~tracemind.Client` of the location the arguments name."""
    from tracemind.client.api import Client

    return Client(location_from(args))


def open_submitter(args: argparse.Namespace) -> Submitter:
    """The submitter of the location the arguments name, with the configured key TTL."""
    from tracemind import config

    return backend_from(args).submitter(config.idempotency_ttl_s())


def _finite(text: str) -> float:
    number = float(text)
    if number in (_INFINITY, -_INFINITY):  # a literal too large for a float, like 1e999
        raise ValueError(f"number out of range: {text}")
    return number


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


@functools.cache
def _strict_decoder() -> json.JSONDecoder:
    """One decoder for every line of a batch (``json.loads`` with options builds one per call)."""
    return json.JSONDecoder(parse_float=_finite, parse_constant=_no_constant)


def check_text(text: str, what: str) -> str:
    """``text``, if it is valid Unicode; else a one-line UsageError naming ``what``.

    Bytes of the command line that are not UTF-8 reach Python as lone surrogates
    (surrogateescape), which no file, JSON document or key hash can hold."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UsageError(
            f"{what}: not valid UTF-8 text (an invalid byte or lone surrogate at character "
            f"{exc.start + 1})"
        ) from None
    return text


def _check_strings(value: Any, what: str) -> None:
    """A UsageError when a string of the decoded JSON ``value`` holds a lone surrogate (what a
    ``\\ud800`` escape without its pair decodes to): such a value is not valid Unicode."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = exc.object[exc.start : exc.end]
        escape = "".join(f"\\u{ord(char):04x}" for char in bad)
        raise UsageError(
            f"{what}: {escape} is a lone surrogate, not a character (invalid Unicode)"
        ) from None


def parse_object(text: str, what: str) -> dict[str, Any]:
    """A JSON object from ``text``; anything else is a one-line UsageError naming ``what``.

    Strict JSON: NaN, Infinity and numbers too large for a float are rejected (they could not
    be written back out as JSON), and so are text that is not valid UTF-8 and ``\\u``
    escapes of lone surrogates (they could not be written at all)."""
    check_text(text, what)
    try:
        value = _strict_decoder().decode(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{what}: malformed JSON ({exc.msg} at line {exc.lineno})") from None
    except ValueError as exc:
        raise UsageError(f"{what}: malformed JSON ({exc})") from None
    if not isinstance(value, dict):
        raise UsageError(f"{what}: must be a JSON object, got {type(value).__name__}")
    if "\\u" in text:  # only an escape can decode to a lone surrogate
        _check_strings(value, what)
    return value


def read_stdin(what: str) -> str:
    """All of standard input as text (``-`` for ``-i`` and ``--inputs``)."""
    try:
        return sys.stdin.read()
    except UnicodeDecodeError:
        raise UsageError(f"{what}: standard input is not UTF-8 text") from None
    except OSError as exc:
        raise UsageError(f"{what}: cannot read standard input ({exc.strerror})") from None


def read_input(value: str) -> dict[str, Any]:
    """``-i`` takes inline JSON, ``@path`` to a file holding it, or ``-`` for standard input."""
    if value == "-":
        return parse_object(read_stdin("-i -"), "-i -")
    if value.startswith("@"):
        path = value[1:]
        try:
            with open(path) as file:
                text = file.read()
        except OSError as exc:
            raise UsageError(f"-i {value}: cannot read {path} ({exc.strerror})") from None
        except UnicodeDecodeError:
            raise UsageError(f"-i {value}: {path} is not UTF-8 text") from None
        return parse_object(text, f"-i {value}")
    return parse_object(value, "-i")


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


class Progress:
    """One line on stderr, rewritten in place, only when stderr is a terminal and the work has
    taken over ``after_s`` seconds (quick commands and scripts see nothing)."""

    def __init__(self, after_s: float = 1.0) -> None:
        import time

        self._clock = time.monotonic
        self._started = self._clock()
        self._after_s = after_s
        self._shown = False
        self._live = sys.stderr.isatty()

    @property
    def elapsed_s(self) -> float:
        return self._clock() - self._started

    def show(self, text: str) -> None:
        if self._live and self.elapsed_s >= self._after_s:
            sys.stderr.write(f"\r\x1b[K{text}")
            sys.stderr.flush()
            self._shown = True

    def done(self) -> None:
        if self._shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
            self._shown = False

    def ticking(self, text: Callable[[], str]) -> _Ticker:
        """While the returned context is active, show ``text()`` every second (on a terminal:
        a SIGALRM timer, so a single long call such as one durable batch is covered too)."""
        return _Ticker(self, text)


class _Ticker:
    def __init__(self, progress: Progress, text: Callable[[], str]) -> None:
        self._progress = progress
        self._text = text
        self._previous: Any = None

    def __enter__(self) -> _Ticker:
        if self._progress._live:
            import signal

            def tick(signum: int, frame: Any) -> None:
                self._progress.show(self._text())

            self._previous = signal.signal(signal.SIGALRM, tick)
            signal.setitimer(signal.ITIMER_REAL, 1.0, 1.0)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._progress._live:
            import signal

            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self._previous)
        self._progress.done()


def task_id_arg(text: str) -> str:
    import argparse

    from tracemind.queue.names import is_task_id

    if not is_task_id(text):
        raise argparse.ArgumentTypeError(f"not a task id: {text!r} (expected 22 hex digits)")
    return text


class QuickForm:
    """The plain spelling of a command, which ``tm`` parses without argparse (see
    :mod:`tracemind.cli.main`): one positional argument, and options written out in full, each
    at most once, every value a word of its own that does not start with ``-``.

    ``options`` maps each option string that takes a value to its destination, ``switches``
    each ``store_true`` flag to its, ``appends`` each repeatable option (``action="append"``)
    to its; ``defaults`` holds the destinations of the command's other options (and the
    defaults that are not None), so that the result has every attribute the argparse parser of
    the command would set. ``exclusive`` lists groups of destinations of which argparse accepts
    at most one (a mutually exclusive group): a command line that gives two is left to
    argparse, which reports it. ``instead_of_positional`` names the destinations that make the
    positional argument optional (``tm enqueue --step HOOK`` has no FLOW).
    """

    def __init__(
        self,
        handler: Callable[[Any], int],
        *,
        positional: str,
        options: dict[str, str],
        switches: dict[str, str],
        defaults: dict[str, Any],
        exclusive: tuple[frozenset[str], ...] = (),
        appends: dict[str, str] | None = None,
        instead_of_positional: frozenset[str] = frozenset(),
    ) -> None:
        self.handler = handler
        self.positional = positional
        self.options = options
        self.switches = switches
        self.defaults = defaults
        self.exclusive = exclusive
        self.appends = appends or {}
        self.instead_of_positional = instead_of_positional

    def parse(self, words: Sequence[str]) -> dict[str, Any] | None:
        """The arguments ``words`` spell, or None when they are not in the plain spelling."""
        values: dict[str, Any] = {
            **dict.fromkeys(self.options.values()),
            **dict.fromkeys(self.appends.values()),
            **dict.fromkeys(self.switches.values(), False),
            **dict.fromkeys([self.positional] if self.instead_of_positional else []),
            **self.defaults,
            "handler": self.handler,
        }
        given: set[str] = set()
        remaining = iter(words)
        for word in remaining:
            if word in self.switches:
                values[self.switches[word]] = True
                continue
            if word in self.appends:
                value = next(remaining, None)
                if value is None or value.startswith("-"):
                    return None
                dest = self.appends[word]
                values[dest] = [*(values[dest] or []), value]
                continue
            if word in self.options:
                dest, value = self.options[word], next(remaining, None)
                if value is None or value.startswith("-"):
                    return None
            elif not word.startswith("-"):
                dest, value = self.positional, word
            else:
                return None
            if dest in given:
                return None
            given.add(dest)
            values[dest] = value
        if self.positional not in given and not (given & self.instead_of_positional):
            return None
        if any(len(group & given) > 1 for group in self.exclusive):
            return None
        return values
