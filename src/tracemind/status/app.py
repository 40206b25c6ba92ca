"""The status endpoint: a read-only Flask view of the daemon's state dir and queue.

``create_app`` takes its dependencies (state dir, data dirs); it holds no state of its own, so
any number of gunicorn threads can serve it. Bodies carry counts and states only — never task
inputs, results or secrets.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, jsonify

from tracemind.config import DataDirs
from tracemind.daemon.state import StateDir, liveness
from tracemind.daemon.status_doc import status_document


def create_app(state: StateDir, dirs: DataDirs) -> Flask:
    app = Flask("tracemind.status")

    def unavailable(body: dict[str, Any]) -> tuple[Response, int]:
        return jsonify(body), 503

    @app.get("/livez")
    @app.get("/healthz")
    def livez() -> Any:
        live = liveness(state)
        if live.running:
            return jsonify(status="alive", heartbeat_age_s=live.heartbeat_age_s)
        return unavailable({"status": live.state, "heartbeat_age_s": live.heartbeat_age_s})

    @app.get("/readyz")
    def readyz() -> Any:
        live = liveness(state)
        beat = live.heartbeat or {}
        if not live.running:
            return unavailable({"ready": False, "reason": f"daemon {live.state}"})
        if beat.get("draining"):
            return unavailable({"ready": False, "reason": "draining"})
        if not beat.get("ready"):
            return unavailable({"ready": False, "reason": beat.get("reason") or "not ready"})
        return jsonify(ready=True)

    @app.get("/status")
    def status() -> Any:
        return jsonify(status_document(state, dirs))

    @app.get("/metrics")
    def metrics() -> Any:
        from tracemind.status.metrics import render

        body, content_type = render(state, dirs)
        return Response(body, content_type=content_type)

    return app
