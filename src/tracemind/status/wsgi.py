"""The WSGI application gunicorn serves, built from the environment the daemon passes down."""

from __future__ import annotations

import os
from pathlib import Path

from tracemind.config import DataDirs
from tracemind.daemon.state import StateDir
from tracemind.status.app import create_app

app = create_app(
    StateDir(Path(os.environ["TM_STATUS_STATE_DIR"])),
    DataDirs(
        Path(os.environ["TM_STATUS_QUEUE_DIR"]),
        Path(os.environ["TM_STATUS_IDEMPOTENCY_DIR"]),
        Path(os.environ["TM_STATUS_DLQ_DIR"]),
    ),
)
