"""The webhook trigger: an HTTP server (one per host:port, shared by its routes) that submits tasks.

Contract, checked in this order for each request:

1. no webhook at the path → 404
2. a method other than the route's → 405 (with ``Allow``)
3. a secret is configured and ``X-TraceMind-Secret`` is missing or wrong → 401 (constant-time
   comparison)
4. ``Content-Length`` above ``max_body_bytes`` → 413 (the body is not read); no length with a
   chunked body → 411
5. a non-empty body that is not UTF-8 JSON → 400 (an empty body is ``null``)
6. submitted → 202 ``{"task_id", "duplicate": false}``; a repeated ``Idempotency-Key`` → 200 with
   the first task's id and ``"duplicate": true``; the queue failed → 503.

The idempotency key is ``<id>:<Idempotency-Key header>``; without the header there is none. The
secret header is never passed to templates. Responses are JSON.
"""

from __future__ import annotations

import hmac
import json
import socket
import uuid
from collections.abc import Callable
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import structlog

from tracemind.triggers.dispatch import Dispatcher
from tracemind.triggers.model import SECRET_HEADER, TriggerEvent, WebhookSpec

log = structlog.get_logger("tracemind.triggers")
Clock = Callable[[], datetime]
IDEMPOTENCY_HEADER = "Idempotency-Key"
_REQUEST_TIMEOUT_S = 30.0


class WebhookEndpoint:
    """One webhook trigger's route: authorizes requests and turns them into events."""

    def __init__(self, spec: WebhookSpec, dispatcher: Dispatcher, clock: Clock) -> None:
        self.spec = spec
        self.dispatcher = dispatcher
        self.clock = clock
        self._secret = None if spec.secret is None else spec.secret.encode("utf-8")

    def authorized(self, header: str | None) -> bool:
        """True without a configured secret; else a constant-time compare with the header."""
        if self._secret is None:
            return True
        offered = (header or "").encode("utf-8", errors="replace")
        return hmac.compare_digest(offered, self._secret)

    def accept(
        self,
        path: str,
        query: dict[str, list[str]],
        headers: dict[str, str],
        body_text: str,
        body: Any,
    ) -> tuple[int, dict[str, Any]]:
        """Submit an authorized, parsed request; returns (status, JSON payload)."""
        key = headers.get(IDEMPOTENCY_HEADER.lower()) or None
        event = TriggerEvent(
            trigger_id=self.spec.id,
            kind="webhook",
            event_id=uuid.uuid4().hex,
            time=self.clock(),
            identity=key,
            fields={
                "method": self.spec.method,
                "path": path,
                "query": query,
                "headers": headers,
                "body": body,
                "body_text": body_text,
            },
        )
        result = self.dispatcher.dispatch(event)
        if result is None:
            return 503, {"error": "the task could not be enqueued; try again later"}
        status = 200 if result.duplicate else 202
        return status, {"task_id": result.task_id, "duplicate": result.duplicate}


class WebhookServer(ThreadingHTTPServer):
    """Serves the routes of every webhook bound to one host:port. Binds in the constructor
    (raising OSError, e.g. EADDRINUSE); call ``serve_forever`` in a thread, ``shutdown`` to stop."""

    daemon_threads = True

    def __init__(self, host: str, port: int, endpoints: dict[str, WebhookEndpoint]) -> None:
        if ":" in host:
            self.address_family = socket.AF_INET6
        self.endpoints = endpoints
        super().__init__((host, port), _Handler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("webhook_request_crashed", client=str(client_address))


class _Handler(BaseHTTPRequestHandler):
    server: WebhookServer
    protocol_version = "HTTP/1.1"
    timeout = _REQUEST_TIMEOUT_S

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    def do_OPTIONS(self) -> None:
        self._handle()

    def _handle(self) -> None:
        url = urlsplit(self.path)
        endpoint = self.server.endpoints.get(url.path)
        if endpoint is None:
            return self._reply(404, {"error": f"no webhook at {url.path}"}, close=True)
        spec = endpoint.spec
        if self.command != spec.method:
            message = f"{url.path} accepts {spec.method}"
            return self._reply(405, {"error": message}, close=True, allow=spec.method)
        if not endpoint.authorized(self.headers.get(SECRET_HEADER)):
            return self._reply(401, {"error": f"missing or wrong {SECRET_HEADER}"}, close=True)
        length = self._content_length()
        if length is None:
            return None  # already answered
        if length > spec.max_body_bytes:
            message = f"body over {spec.max_body_bytes} bytes"
            return self._reply(413, {"error": message}, close=True)
        raw = self.rfile.read(length) if length else b""
        try:
            text = raw.decode("utf-8")
            body = json.loads(text, parse_constant=_reject_constant) if text.strip() else None
        except ValueError as error:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            return self._reply(400, {"error": f"body is not valid JSON: {error}"})
        status, payload = endpoint.accept(
            url.path, parse_qs(url.query, keep_blank_values=True), self._headers(), text, body
        )
        return self._reply(status, payload)

    def _content_length(self) -> int | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self._reply(
                411,
                {"error": "send a Content-Length (chunked bodies are not accepted)"},
                close=True,
            )
            return None
        text = self.headers.get("Content-Length", "0").strip() or "0"
        if not text.isdigit():
            self._reply(400, {"error": "invalid Content-Length"}, close=True)
            return None
        return int(text)

    def _headers(self) -> dict[str, str]:
        """Request headers with lower-case names, repeated ones joined, the secret left out."""
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            lowered = name.lower()
            if lowered == SECRET_HEADER.lower():
                continue
            headers[lowered] = f"{headers[lowered]}, {value}" if lowered in headers else value
        return headers

    def _reply(
        self, status: int, payload: dict[str, Any], *, close: bool = False, allow: str = ""
    ) -> None:
        data = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if allow:
            self.send_header("Allow", allow)
        if close:
            # The body was not read: the connection cannot carry another request.
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("webhook_request", client=self.client_address[0], line=format % args)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
