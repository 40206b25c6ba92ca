"""gunicorn settings for the status and webhook servers: their error and access logs as JSON
lines through the same structlog processors as the daemon (to the daemon's log file, or stdout;
``TM_GUNICORN_LOG_STREAM=stderr`` for stderr, ``TM_GUNICORN_ACCESS_LOG=0`` for no access log).

An access line is ``{"event": "request served", "method": "GET", "path": "/status",
"status": 200, "duration_ms": 1.234, "remote": "127.0.0.1", ...}``. Probe requests (``/livez``,
``/readyz``, ``/healthz``: every few seconds from Docker or the kubelet) are not logged unless
``TM_STATUS_LOG_PROBES=1``. The query string is never logged (it may carry a secret).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import structlog

from tracemind.log import UtcStamper

PROBE_PATHS = frozenset({"/livez", "/readyz", "/healthz"})
ACCESS_EVENT = "request served"

_log_file = os.environ.get("TM_STATUS_LOG_FILE") or None
_stream = "stderr" if os.environ.get("TM_GUNICORN_LOG_STREAM") == "stderr" else "stdout"
_access_log = os.environ.get("TM_GUNICORN_ACCESS_LOG") != "0"
_log_probes = os.environ.get("TM_STATUS_LOG_PROBES") == "1"


class AccessFields(logging.Filter):
    """Turns gunicorn's access record (its ``args`` are the request's atoms) into fields, and
    drops probe requests unless ``log_probes``."""

    def __init__(self, log_probes: bool = False) -> None:
        super().__init__()
        self.log_probes = log_probes

    def filter(self, record: logging.LogRecord) -> bool:
        atoms = record.args
        if not isinstance(atoms, Mapping):
            return True
        path = str(atoms.get("U") or "")
        if path in PROBE_PATHS and not self.log_probes:
            return False
        status = str(atoms.get("s") or "")
        micros = atoms.get("D")
        fields: dict[str, Any] = {
            "method": atoms.get("m"),
            "path": path,
            "status": int(status) if status.isdigit() else status,
            "duration_ms": round(micros / 1000, 3) if isinstance(micros, int) else None,
            "remote": atoms.get("h"),
        }
        record.__dict__.update(fields)
        record.msg, record.args = ACCESS_EVENT, None
        return True


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
            "foreign_pre_chain": [
                structlog.stdlib.add_log_level,
                _logger_name,
                structlog.stdlib.ExtraAdder(),
                UtcStamper(),
            ],
            "processors": [
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                structlog.processors.JSONRenderer(),
            ],
        }
    },
    "filters": {"access": {"()": AccessFields, "log_probes": _log_probes}},
    "handlers": {"json": _handler},
    "loggers": {
        "gunicorn.error": {"handlers": ["json"], "level": "INFO", "propagate": False},
        # The dashboard's actions (status/actions.py): every one is logged.
        "tracemind.status": {"handlers": ["json"], "level": "INFO", "propagate": False},
        "gunicorn.access": {
            "handlers": ["json"] if _access_log else [],
            "filters": ["access"],
            "level": "INFO" if _access_log else "CRITICAL",
            "propagate": False,
        },
    },
    "root": {"handlers": ["json"], "level": "WARNING"},
}
accesslog = "-" if _access_log else None
access_log_format = ACCESS_EVENT
