"""What a daemon that cannot start serves for a while: every status request answered 503 with
the reason, so that a container's health check (``tm health``, whose output Docker keeps in
``docker inspect``'s ``State.Health.Log``) reports the same line as the daemon's log.

Docker runs the first health check one interval after the container starts, and only while it
runs: a daemon that exits at once leaves ``Health.Log`` empty and ``docker compose up --wait``
saying only "unhealthy". The image therefore sets ``TM_START_ERROR_HOLD_S`` a little longer
than its health check interval.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

REQUEST_TIMEOUT_S = 2.0


def hold_s_from(text: str | None) -> float:
    """``TM_START_ERROR_HOLD_S`` as seconds: 0 when unset, not a number, or negative."""
    try:
        value = float(text or 0)
    except ValueError:
        return 0.0
    return value if value > 0 else 0.0


AFTER_ANSWER_S = 0.5
"""How long to keep answering after the first answer (a probe pair such as /livez and /readyz)."""


def serve_failure(bind: str | None, reason: str, hold_s: float) -> None:
    """Answer every request on ``bind`` (``host:port``) with 503 and ``reason`` until
    :data:`AFTER_ANSWER_S` after the first answer (the health check has its output), or for
    ``hold_s`` seconds at most; then return. Without a bind, or when the port cannot be had,
    just wait ``hold_s``."""
    answered = threading.Event()
    server = _server(bind, reason, answered) if bind else None
    if server is None:
        time.sleep(hold_s)
        return
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2})
    thread.daemon = True
    thread.start()
    try:
        if answered.wait(hold_s):
            time.sleep(AFTER_ANSWER_S)
    finally:
        server.shutdown()
        server.server_close()


def _server(bind: str, reason: str, answered: threading.Event) -> ThreadingHTTPServer | None:
    body = json.dumps({"ready": False, "status": "failed", "reason": reason}).encode()

    class Handler(BaseHTTPRequestHandler):
        timeout = REQUEST_TIMEOUT_S

        def do_GET(self) -> None:
            self.send_response(503)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            answered.set()

        def log_message(self, format: str, *args: object) -> None:
            pass  # the reason is logged once, by the caller

    host, _, port = bind.rpartition(":")
    with contextlib.suppress(OSError, ValueError):
        server = ThreadingHTTPServer((host.strip("[]") or "0.0.0.0", int(port)), Handler)
        server.daemon_threads = True
        return server
    return None
