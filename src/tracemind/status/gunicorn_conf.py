"""gunicorn settings for the status and webhook servers: their error and access logs as JSON
lines through the same structlog processors as the daemon (to the daemon's log file, or stdout;
``TM_GUNICORN_LOG_STREAM=stderr`` for stderr, ``TM_GUNICORN_ACCESS_LOG=0`` for no access log)."""

from __future__ import annotations

import os
from typing import Any

import structlog

_log_file = os.environ.get("TM_STATUS_LOG_FILE") or None
_stream = "stderr" if os.environ.get("TM_GUNICORN_LOG_STREAM") == "stderr" else "stdout"

_processors: list[Any] = [
    structlog.stdlib.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
]


def _logger_name(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    record = event.get("_record")
    if record is not None:
        event["logger"] = record.name
    return event


_handler: dict[str, Any] = (
    {"class": "logging.FileHandler", "filename": _log_file, "formatter": "json"}
    if _log_file
    else {
        "class": "logging.StreamHandler",
        "stream": f"ext://sys.{_stream}",
        "formatter": "json",
    }
)

logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "json": {
            "()": structlog.stdlib.ProcessorFormatter,
            "foreign_pre_chain": [*_processors, _logger_name],
            "processors": [
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.JSONRenderer(),
            ],
        }
    },
    "handlers": {"json": _handler},
    "loggers": {
        "gunicorn.error": {"handlers": ["json"], "level": "INFO", "propagate": False},
        "gunicorn.access": {"handlers": ["json"], "level": "INFO", "propagate": False},
    },
    "root": {"handlers": ["json"], "level": "WARNING"},
}
accesslog = None if os.environ.get("TM_GUNICORN_ACCESS_LOG") == "0" else "-"
access_log_format = "%(m)s %(U)s %(s)s %(M)sms"
