"""The status endpoint: a read-only Flask view of the daemon's state dir and queue.

``create_app`` takes its dependencies (state dir, data dirs). The probes read only the state
dir (a lock probe and the heartbeat) and, for ``/readyz``, the reports of records a worker may
not read (one small file each, none normally), so they stay fast under load; ``/status`` and
``/metrics`` list the queue directories, so their bodies are reused for up to
:data:`COUNTS_MAX_AGE_S` (one listing a second, however many scrapers). Bodies carry counts and
states only — never task inputs, results or secrets.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from flask import Flask, Response, jsonify

from tracemind.config import DataDirs
from tracemind.daemon.state import StateDir, liveness
from tracemind.daemon.status_doc import problem_reason, status_document
from tracemind.problems import unreadable_records

COUNTS_MAX_AGE_S = 1.0

T = TypeVar("T")


class Recent(Generic[T]):
    """The last result of an expensive read, reused while younger than ``max_age_s``; one
    thread recomputes while the others wait for its result (thread-safe)."""

    def __init__(self, compute: Callable[[], T], max_age_s: float) -> None:
        self.compute = compute
        self.max_age_s = max_age_s
        self._lock = threading.Lock()
        self._value: T | None = None
        self._at_s = float("-inf")

    def get(self) -> T:
        with self._lock:
            now_s = time.monotonic()
            if self._value is None or now_s - self._at_s >= self.max_age_s:
                self._value, self._at_s = self.compute(), now_s
            return self._value


def create_app(state: StateDir, dirs: DataDirs) -> Flask:
    from tracemind.status.metrics import render

    app = Flask("tracemind.status")
    status_doc = Recent(lambda: status_document(state, dirs), COUNTS_MAX_AGE_S)
    metrics_text = Recent(lambda: render(state, dirs), COUNTS_MAX_AGE_S)

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
        count, first = unreadable_records(dirs.queue)
        if count:
            return unavailable(
                {"ready": False, "reason": problem_reason(count), "unreadable_records": first}
            )
        return jsonify(ready=True)

    @app.get("/status")
    def status() -> Any:
        return jsonify(status_doc.get())

    @app.get("/metrics")
    def metrics() -> Any:
        body, content_type = metrics_text.get()
        return Response(body, content_type=content_type)

    return app
