"""Logging: structlog, one JSON object per line, configured once per process.

Every line carries an ISO-8601 UTC ``timestamp``, ``level``, ``event`` and ``logger``, plus
whatever is bound in the context (``task_id``, ``flow_id``, ``attempt`` while a task runs).
The standard library's ``logging`` (a step's own ``logging.getLogger(__name__).info(...)``, or a
library's) goes to the same sink through the same processors, so its lines are JSON objects
with the same keys and the same bound context. ``get_logger`` keeps structlog off the thin CLI's
import path until something is logged; this module imports nothing else the CLI would not load
anyway.

Event names are short lowercase sentences without a final period ("worker started", "task
succeeded"); details go into keys, never into the event string.
"""

from __future__ import annotations

import json
import os
import sys
import time

from tracemind.encoders import reusing_encoder

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, MutableMapping
    from pathlib import Path
    from typing import Any, TextIO


def get_logger(name: str) -> Any:
    """A structlog logger that stamps ``logger=name`` on each event (imports structlog lazily).

    In a process that configured nothing (a ``tm`` verb that happens to log, e.g. a damaged
    record moved aside), lines go to stderr, so stdout stays the command's own output."""
    import structlog

    if not structlog.is_configured():
        configure(sys.stderr)
    return structlog.get_logger().bind(logger=name)


class LogFile:
    """An append-only log file that can be reopened (SIGHUP, after logrotate moved it).

    Unbuffered: each ``write`` (a whole line, from the loggers) goes to the file with one
    ``write(2)`` as it is made, so a process that dies loses no line it logged, and the lines
    of processes sharing the file (``O_APPEND``) never run into each other."""

    def __init__(self, path: Path) -> None:
        import threading  # here, not at the top: only the daemon and its workers log to files

        self.path = path
        # Reentrant: SIGHUP's handler may reopen while the interrupted thread is mid-write.
        self._lock = threading.RLock()
        self._fd = self._open()

    def _open(self) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        from tracemind.fsutil import open_append_regular

        # Never blocks: a FIFO (or anything but a regular file) at the path is an error.
        return open_append_regular(self.path)

    def write(self, text: str) -> int:
        data = text.encode()
        with self._lock:
            written = os.write(self._fd, data)
            while written < len(data):  # (a full disk, a signal: write the rest)
                written += os.write(self._fd, data[written:])
        return len(text)

    def flush(self) -> None:
        """Nothing to do: every line is written as it comes."""

    def reopen(self) -> None:
        with self._lock:
            old, self._fd = self._fd, self._open()
            os.close(old)

    def fileno(self) -> int:
        return self._fd


def configure(sink: TextIO | LogFile | None = None, *, level: str = "info") -> None:
    """Send JSON lines to ``sink`` (default stdout) for this process: structlog's events and,
    through a handler on the root logger (replacing any this function installed before), the
    standard library's records at ``level`` and above."""
    import logging

    import structlog

    out = sink or sys.stdout
    threshold = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            UtcStamper(),
            structlog.processors.format_exc_info,
            render_json,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=structlog.WriteLoggerFactory(file=out),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
    _route_stdlib_logging(out, threshold)


class UtcStamper:
    """A processor that stamps ``timestamp``: the time of the event in ISO-8601 UTC with
    microseconds, e.g. ``2026-12-06T12:38:42.240174Z`` (always six digits).

    structlog's ``TimeStamper`` builds a timezone-aware ``datetime`` for every event: on a
    draining worker (two lines a task) ~8% of its CPU. The part that changes once a second is
    formatted once a second here; the microseconds are added to it."""

    def __init__(self, clock_ns: Callable[[], int] = time.time_ns) -> None:
        self.clock_ns = clock_ns
        """Epoch nanoseconds, ``time.time_ns`` unless a test injects a clock."""
        self._second: tuple[int, str] = (-1, "")
        """The epoch second formatted last, and its text: one tuple, replaced whole, so that a
        thread never reads one second's text with another's number."""

    def __call__(
        self, logger: object, method_name: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        second, micros = divmod(self.clock_ns() // 1000, 1_000_000)
        formatted, text = self._second
        if second != formatted:
            text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = (second, text)
        event["timestamp"] = f"{text}.{micros:06d}Z"
        return event


def render_json(logger: object, method_name: str, event: MutableMapping[str, Any]) -> str:
    """The last processor: the event as one JSON object, keys in the order they were added
    (structlog's ``JSONRenderer``, with one encoder for every line instead of one per line)."""
    return _encode_line(event)


def _unencodable(value: Any) -> Any:
    """What structlog's renderer makes of a value JSON cannot hold: its ``__structlog__()``,
    else its ``repr``."""
    structlog_form = getattr(value, "__structlog__", None)
    return structlog_form() if callable(structlog_form) else repr(value)


_encode_line = reusing_encoder(json.JSONEncoder(default=_unencodable, check_circular=False))


_HANDLER_NAME = "tracemind"
"""The name of the root handler :func:`configure` installs (a second call replaces it)."""


def _route_stdlib_logging(out: TextIO | LogFile, threshold: int) -> None:
    import logging

    import structlog

    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.stdlib.ExtraAdder(),
            UtcStamper(),
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            render_json,
        ],
    )
    handler = logging.StreamHandler(out)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(threshold)
