"""The status endpoint: a Flask view of the daemon's state dir and queue, read-only unless a
token enables the dashboard's actions.

``create_app`` takes its dependencies (state dir, backend, the actions token). The probes
read only the state dir (a lock probe and the heartbeat) and, for ``/readyz``, the reports of
records a worker may not read (one small file each, none normally), so they stay fast under
load; ``/status`` and ``/metrics`` count the queue, so their bodies are refreshed in the
background at most every :data:`COUNTS_MAX_AGE_S` and served from the last refresh while
requests keep coming (see :class:`Recent`). Bodies carry counts and states only — never task
inputs, results or secrets.

``GET /`` is the dashboard (docs/dashboard.md): one page from ``templates/`` and ``static/``
that reads ``/dashboard.json`` (refreshed like ``/status``) every 2 s. Every response carries
:data:`SECURITY_HEADERS`. With a token (``TM_STATUS_TOKEN``) the action routes exist — POST
``/api/dlq/<id>/requeue``, ``/api/dlq/<id>/purge``, ``/api/tasks/<id>/cancel`` with
``Authorization: Bearer <token>`` (401 otherwise); without one they answer 404.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from flask import Flask, Response, jsonify, render_template, request

from tracemind.backend.protocol import Backend
from tracemind.daemon.state import StateDir, liveness
from tracemind.daemon.status_doc import problem_reason, status_document
from tracemind.errors import QueueUnavailable

COUNTS_MAX_AGE_S = 1.0
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
"""No inline script or style, nothing from another origin, not framed, no referrer."""
ACTION_ROUTES = (
    ("/api/dlq/<task_id>/requeue", "requeue"),
    ("/api/dlq/<task_id>/purge", "purge"),
    ("/api/tasks/<task_id>/cancel", "cancel"),
)

T = TypeVar("T")


class Recent(Generic[T]):
    """The last result of an expensive read, kept fresh off the request path: a result younger
    than ``max_age_s`` is served as it is; an older one is served at once while one background
    refresh starts (stale-while-revalidate), so a request that comes while requests keep coming
    never waits for a listing of the queue, however deep it is or however busy the disk. A
    result older than ``stale_limit_s`` (nobody asked for a while) is not served: the request
    computes a fresh one (so a scrape every 15 s never gets the previous scrape's figures).
    Thread-safe."""

    def __init__(
        self, compute: Callable[[], T], max_age_s: float, stale_limit_s: float | None = None
    ) -> None:
        self.compute = compute
        self.max_age_s = max_age_s
        self.stale_limit_s = 3 * max_age_s if stale_limit_s is None else stale_limit_s
        self._lock = threading.Lock()
        self._value: T | None = None
        self._at_s = float("-inf")
        self._refreshing = False

    def prime(self) -> None:
        """Compute the first result in the background now, so that the first request finds
        one (a server calls this as it starts)."""
        with self._lock:
            if self._value is None and not self._refreshing:
                self._refreshing = True
                threading.Thread(target=self._refresh, name="status-refresh", daemon=True).start()

    def get(self) -> T:
        with self._lock:
            age_s = time.monotonic() - self._at_s
            if self._value is None or age_s >= self.stale_limit_s:
                self._value, self._at_s = self.compute(), time.monotonic()
                return self._value
            if age_s >= self.max_age_s and not self._refreshing:
                self._refreshing = True
                threading.Thread(target=self._refresh, name="status-refresh", daemon=True).start()
            return self._value

    def _refresh(self) -> None:
        try:
            value = self.compute()
        except Exception:  # the last good value stays; the next request tries again
            with self._lock:
                self._refreshing = False
            raise
        with self._lock:
            self._value, self._at_s, self._refreshing = value, time.monotonic(), False


def create_app(state: StateDir, backend: Backend, token: str | None = None) -> Flask:
    """The app over ``state`` and ``backend`` (opened read-only by its caller); ``token``
    (non-empty) adds the dashboard's action routes, the only ones that write."""
    from tracemind.status.dashboard import dashboard_document
    from tracemind.status.metrics import render

    app = Flask("tracemind.status")
    status_doc = Recent(lambda: status_document(state, backend), COUNTS_MAX_AGE_S)
    metrics_text = Recent(lambda: render(state, backend), COUNTS_MAX_AGE_S)
    actions = bool(token)
    dashboard_doc = Recent(
        lambda: dashboard_document(state, backend, actions=actions), COUNTS_MAX_AGE_S
    )
    status_doc.prime()  # (what scrapers ask first is ready before they ask)
    metrics_text.prime()

    @app.errorhandler(QueueUnavailable)
    def queue_unavailable(error: QueueUnavailable) -> Any:
        """A count asked of a server that cannot be reached: 503 with the error line."""
        return jsonify(error=str(error)), 503

    @app.after_request
    def secure(response: Response) -> Response:
        response.headers.update(SECURITY_HEADERS)
        return response

    def dashboard() -> Any:
        return render_template("dashboard.html", actions=actions)

    # GET (and the HEAD Flask adds to it) only: no automatic OPTIONS either.
    app.add_url_rule("/", "dashboard", dashboard, methods=["GET"], provide_automatic_options=False)

    @app.get("/dashboard.json")
    def dashboard_json() -> Any:
        response = jsonify(dashboard_doc.get())
        response.headers["Cache-Control"] = "no-store"
        return response

    if token:
        add_action_routes(app, backend, token)

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
        count, first = backend.unreadable_records()
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


def add_action_routes(app: Flask, backend: Backend, token: str) -> None:
    """The POST routes of :data:`ACTION_ROUTES`, each requiring ``Authorization: Bearer``."""
    from tracemind.status.actions import Actions, fingerprint

    actions = Actions(backend.location)
    expected = f"Bearer {token}".encode()

    def act(action: str, task_id: str) -> Any:
        given = request.headers.get("Authorization", "")
        remote = request.remote_addr or ""
        if not hmac.compare_digest(given.encode(), expected):
            logging.getLogger("tracemind.status.actions").info(
                "dashboard action refused",
                extra={
                    "action": action,
                    "remote": remote,
                    "token": fingerprint(given.removeprefix("Bearer ")) if given else None,
                },
            )
            return jsonify(error="a valid token is required (Authorization: Bearer)"), 401
        result = actions.run(action, task_id, remote=remote, token=token)
        return jsonify(result.to_dict(action, task_id)), result.status

    for rule, action in ACTION_ROUTES:
        app.add_url_rule(
            rule,
            f"action_{action}",
            lambda task_id, action=action: act(action, task_id),
            methods=["POST"],
        )
