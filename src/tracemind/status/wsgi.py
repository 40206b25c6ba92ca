"""The application gunicorn serves, built from the environment the daemon passes down:
``app`` is the Flask app (with the dashboard's actions when ``TM_STATUS_TOKEN`` is set);
``asgi_app`` serves it from gunicorn's ``asgi`` worker (see
:mod:`tracemind.status.bridge` for why)."""

from __future__ import annotations

import os
from pathlib import Path

from tracemind.backend import open_backend
from tracemind.daemon.state import StateDir
from tracemind.status.app import create_app
from tracemind.status.bridge import WsgiBridge

APP_THREADS = 4
"""Requests run at once; /status and /metrics reuse one listing a second, probes are cheap."""
MAX_BODY_BYTES = 64 * 1024
"""Status routes take no body; a larger one is refused with 413 without reaching Flask."""

app = create_app(
    StateDir(Path(os.environ["TM_STATUS_STATE_DIR"])),
    open_backend(os.environ["TM_STATUS_QUEUE_URL"], durable=False),
    token=os.environ.get("TM_STATUS_TOKEN") or None,
)
asgi_app = WsgiBridge(app, threads=APP_THREADS, max_body_bytes=MAX_BODY_BYTES)
