"""The webhook trigger: an HTTP server (one per host:port, shared by its routes) that submits tasks.

The HTTP side is gunicorn (a child process, :mod:`tracemind.triggers.webhook_app`); the process
that runs the triggers binds the port, hands it to gunicorn, and submits what gunicorn passes
back over a private Unix socket, so the counters, the submitter and its idempotency stay here.

Contract, checked in this order for each request:

1. no webhook at the path → 404
2. a method other than the route's → 405 (with ``Allow``)
3. a secret is configured and the request is not authentic → 401. Authentic: it carries
   ``X-TraceMind-Secret`` equal to the secret, or ``X-TraceMind-Signature: sha256=<hex of
   HMAC-SHA256(secret, raw body)>``, and every one of these headers it carries is right
   (constant-time comparisons). The signature is checked once the body is read.
4. more than one ``Content-Length``, or one that is not ASCII digits → 400; above
   ``max_body_bytes`` → 413 (the body is not read); no length with a chunked body → 411
5. a body shorter than its ``Content-Length`` (the client stopped or closed) → 400 when the
   client can still read it, and nothing is submitted; a non-empty body that is not UTF-8 JSON,
   or holds a lone surrogate (``"\\ud800"``) → 400 (an empty body is ``null``)
6. submitted → 202 ``{"task_id", "duplicate": false}``; a repeated ``Idempotency-Key`` → 200 with
   the first task's id and ``"duplicate": true``; the queue failed → 503.

The idempotency key is ``<id>:<Idempotency-Key header>``; without the header there is none. The
secret header is never passed to templates. Responses are JSON.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import structlog

from tracemind.status.gunicorn_process import BACKLOG, gunicorn_argv, start_gunicorn, stop_gunicorn
from tracemind.triggers.dispatch import Dispatcher
from tracemind.triggers.model import TriggerEvent, WebhookSpec
from tracemind.triggers.webhook_channel import Route, recv_frame, send_frame

log = structlog.get_logger("tracemind.triggers")
Clock = Callable[[], datetime]
IDEMPOTENCY_HEADER = "Idempotency-Key"
STARTUP_TIMEOUT_S = 20.0
CHANNEL_IO_TIMEOUT_S = 10.0


class WebhookEndpoint:
    """One webhook trigger's route in the trigger process: turns checked requests into events."""

    def __init__(self, spec: WebhookSpec, dispatcher: Dispatcher, clock: Clock) -> None:
        self.spec = spec
        self.dispatcher = dispatcher
        self.clock = clock

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


class WebhookServer:
    """Serves the routes of every webhook bound to one host:port.

    The constructor binds the port (raising OSError, e.g. EADDRINUSE), starts gunicorn on it
    (one ``asgi`` worker, see :mod:`tracemind.status.gunicorn_process` for the connection limit
    and timeouts) and returns once that worker has asked for its routes (OSError if it does not
    within ``start_timeout_s``). :meth:`serve_forever` then answers the worker's calls (one at a
    time, in the calling thread) until :meth:`shutdown`; :meth:`server_close` stops gunicorn and
    closes the port.
    """

    def __init__(
        self,
        host: str,
        port: int,
        endpoints: dict[str, WebhookEndpoint],
        start_timeout_s: float = STARTUP_TIMEOUT_S,
    ) -> None:
        self.endpoints = endpoints
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.listener = socket.create_server((host, port), family=family, backlog=BACKLOG)
        self.server_address: tuple[Any, ...] = self.listener.getsockname()
        self._dir = tempfile.mkdtemp(prefix="tm-webhook-")  # 0700: only this user connects
        self._channel = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._stopped.set()
        self.process: subprocess.Popen[bytes] | None = None
        try:
            self._channel.bind(os.path.join(self._dir, "channel"))
            self._channel.listen(64)
            self._start(start_timeout_s)
        except BaseException:
            self.server_close()
            raise

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def _start(self, timeout_s: float) -> None:
        missing = [name for name in ("flask", "gunicorn") if importlib.util.find_spec(name) is None]
        if missing:
            raise OSError(
                f"webhooks need {' and '.join(missing)}: install TraceMind with its status extra "
                "(pip install '.[status]' in a checkout)"
            )
        fd = self.listener.fileno()
        env = dict(
            os.environ,
            TM_WEBHOOK_CHANNEL=self._channel.getsockname(),
            TM_STATUS_LOG_FILE="",
            TM_GUNICORN_LOG_STREAM="stderr",
            TM_GUNICORN_ACCESS_LOG="0",
        )
        argv = gunicorn_argv(f"fd://{fd}", "tracemind.triggers.webhook_asgi:asgi_app")
        self.process = start_gunicorn(argv, env, pass_fds=(fd,))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise OSError(f"the webhook server exited with code {self.process.returncode}")
            if self._answer_one(timeout_s=0.1) == "hello":
                return
        raise OSError(f"the webhook server did not start within {timeout_s:g}s")

    def serve_forever(self, poll_interval: float = 0.2) -> None:
        """Answer the worker's calls until :meth:`shutdown`."""
        self._stopped.clear()
        try:
            while not self._stop.is_set():
                self._answer_one(timeout_s=poll_interval)
        finally:
            self._stopped.set()

    def shutdown(self) -> None:
        """Stop :meth:`serve_forever` and wait for it to return."""
        self._stop.set()
        self._stopped.wait()

    def server_close(self) -> None:
        """Stop gunicorn, close the port and the channel; safe to call twice."""
        stop_gunicorn(self.process)
        self.listener.close()
        self._channel.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def _answer_one(self, timeout_s: float) -> str | None:
        """Answer one call if one arrives within ``timeout_s``; its ``op``."""
        self._channel.settimeout(timeout_s)
        try:
            conn, _ = self._channel.accept()
        except TimeoutError:
            return None
        with conn:
            conn.settimeout(CHANNEL_IO_TIMEOUT_S)
            try:
                message = recv_frame(conn)
                op = str(message.get("op"))
                try:
                    reply = self._reply(op, message)
                except Exception:  # a bug in one request must not end the server; logged in full
                    log.exception("webhook request crashed", op=op)
                    reply = {"status": 500, "payload": {"error": "internal error"}}
                send_frame(conn, reply)
            except OSError as error:  # the worker went away mid-call: it answers nobody
                log.warning("webhook channel failed", error=str(error))
                return None
            return op

    def _reply(self, op: str, message: dict[str, Any]) -> dict[str, Any]:
        if op == "hello":
            routes = {path: _route(e.spec).to_dict() for path, e in self.endpoints.items()}
            return {"routes": routes}
        endpoint = self.endpoints[message["path"]]
        status, payload = endpoint.accept(
            message["path"], message["query"], message["headers"], message["body_text"],
            message["body"],
        )  # fmt: skip
        return {"status": status, "payload": payload}


def _route(spec: WebhookSpec) -> Route:
    secret = None if spec.secret is None else spec.secret.encode("utf-8")
    return Route(spec.id, spec.method, spec.max_body_bytes, secret)
