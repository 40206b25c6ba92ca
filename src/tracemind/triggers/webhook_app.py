"""The webhook's HTTP side: a Flask app that gunicorn serves (through
:class:`tracemind.status.bridge.WsgiBridge`), checking each request and passing the accepted
ones to the trigger process over :mod:`tracemind.triggers.webhook_channel`.

The checks before the body is read (:func:`precheck`, on the event loop) and after it (the Flask
view) implement steps 1-5 of the contract in :mod:`tracemind.triggers.webhook`; step 6 (submit)
happens in the trigger process.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs

from flask import Flask, Response, request

from tracemind.status.bridge import RAW_HEADERS_KEY, WsgiBridge
from tracemind.status.bridge import Response as BridgeResponse
from tracemind.triggers import webhook_channel
from tracemind.triggers.model import SECRET_HEADER
from tracemind.triggers.webhook_channel import Route

SIGNATURE_HEADER = "X-TraceMind-Signature"
SIGNATURE_PREFIX = "sha256="
APP_THREADS = 4
"""Requests checked and forwarded at once (the trigger process submits one at a time)."""
_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
_DIGITS = re.compile(r"[0-9]{1,18}", re.ASCII)


def json_response(status: int, payload: dict[str, Any], **headers: str) -> BridgeResponse:
    data = json.dumps(payload).encode("utf-8")
    pairs = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    pairs += [
        (k.lower().replace("_", "-").encode(), v.encode("latin-1")) for k, v in headers.items()
    ]
    return status, pairs, data


def precheck(routes: Mapping[str, Route], environ: dict[str, Any]) -> BridgeResponse | None:
    """Steps 1-4 of the contract from the headers alone; None lets the body be read."""
    path = _path(environ)
    route = routes.get(path)
    if route is None:
        return json_response(404, {"error": f"no webhook at {path}"})
    if environ["REQUEST_METHOD"] != route.method:
        return json_response(405, {"error": f"{path} accepts {route.method}"}, Allow=route.method)
    raw: list[tuple[str, str]] = environ[RAW_HEADERS_KEY]
    if route.secret is not None and not _credentials_plausible(route.secret, raw):
        return _unauthorized()
    if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
        message = "send a Content-Length (chunked bodies are not accepted)"
        return json_response(411, {"error": message})
    lengths = [value for name, value in raw if name == "content-length"]
    if len(lengths) > 1:
        return json_response(400, {"error": "more than one Content-Length"})
    text = lengths[0].strip() if lengths else "0"
    if not _DIGITS.fullmatch(text):
        return json_response(400, {"error": "invalid Content-Length"})
    if int(text) > route.max_body_bytes:
        return json_response(413, {"error": f"body over {route.max_body_bytes} bytes"})
    return None


def create_app(routes: Mapping[str, Route], channel_path: str) -> Flask:
    """The view behind :func:`precheck`: signature, JSON, then the trigger process answers."""
    app = Flask("tracemind.webhook")

    @app.route("/", defaults={"_": ""}, methods=_ALL_METHODS, provide_automatic_options=False)
    @app.route("/<path:_>", methods=_ALL_METHODS, provide_automatic_options=False)
    def hook(_: str) -> Any:
        path = _path(request.environ)
        route = routes[path]  # precheck answered for any other path
        raw_body = request.get_data(cache=False)
        raw_headers: list[tuple[str, str]] = request.environ[RAW_HEADERS_KEY]
        if route.secret is not None and not _authentic(route.secret, raw_headers, raw_body):
            return _flask(_unauthorized())
        try:
            text = raw_body.decode("utf-8")
            body = json.loads(text, parse_constant=_reject_constant) if text.strip() else None
            # A lone surrogate ("\ud800") parses, but no task file can hold it.
            json.dumps(body, ensure_ascii=False).encode("utf-8")
        except ValueError as error:  # UnicodeError and JSONDecodeError are ValueErrors
            return _flask(json_response(400, {"error": f"body is not valid JSON: {error}"}))
        event = {
            "op": "event",
            "path": path,
            "query": _query(request.environ.get("QUERY_STRING", "")),
            "headers": _template_headers(raw_headers),
            "body_text": text,
            "body": body,
        }
        try:
            reply = webhook_channel.call(channel_path, event)
            status, payload = int(reply["status"]), dict(reply["payload"])
        except (OSError, KeyError, TypeError, ValueError):
            status, payload = 503, {"error": "the task could not be enqueued; try again later"}
        return _flask(json_response(status, payload))

    return app


def build_app(channel_path: str) -> WsgiBridge:
    """Ask the trigger process for the routes, then the ASGI app gunicorn serves."""
    hello = webhook_channel.call(channel_path, {"op": "hello"})
    routes = {path: Route.from_dict(data) for path, data in hello["routes"].items()}
    return WsgiBridge(
        create_app(routes, channel_path),
        threads=APP_THREADS,
        max_body_bytes=max(route.max_body_bytes for route in routes.values()),
        precheck=lambda environ: precheck(routes, environ),
    )


def signature(secret: bytes, body: bytes) -> str:
    """The ``X-TraceMind-Signature`` value of ``body``: ``sha256=`` + hex HMAC-SHA256."""
    return SIGNATURE_PREFIX + hmac.new(secret, body, hashlib.sha256).hexdigest()


def _credentials_plausible(secret: bytes, raw: list[tuple[str, str]]) -> bool:
    """Before the body: a credential is present, and a secret header (if any) is right."""
    secrets = _values(raw, SECRET_HEADER)
    signatures = _values(raw, SIGNATURE_HEADER)
    if not secrets and not signatures:
        return False
    return all(_same(value, secret) for value in secrets)


def _authentic(secret: bytes, raw: list[tuple[str, str]], body: bytes) -> bool:
    """Every credential offered is right, and there is one (checked in constant time)."""
    signatures = _values(raw, SIGNATURE_HEADER)
    expected = signature(secret, body).encode("ascii")
    return _credentials_plausible(secret, raw) and all(
        _same(value.strip().lower(), expected) for value in signatures
    )


def _same(offered: str, expected: bytes) -> bool:
    return hmac.compare_digest(offered.encode("latin-1", errors="replace"), expected)


def _values(raw: list[tuple[str, str]], name: str) -> list[str]:
    lowered = name.lower()
    return [value for header, value in raw if header == lowered]


def _unauthorized() -> BridgeResponse:
    message = f"missing or wrong {SECRET_HEADER} (or {SIGNATURE_HEADER})"
    return json_response(401, {"error": message})


def _template_headers(raw: list[tuple[str, str]]) -> dict[str, str]:
    """Request headers with lower-case names, repeated ones joined, the secret left out."""
    headers: dict[str, str] = {}
    for name, value in raw:
        if name == SECRET_HEADER.lower():
            continue
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


def _path(environ: Mapping[str, Any]) -> str:
    return str(environ["PATH_INFO"]).encode("latin-1").decode("utf-8", errors="replace")


def _query(query_string: str) -> dict[str, list[str]]:
    text = query_string.encode("latin-1").decode("utf-8", errors="replace")
    return parse_qs(text, keep_blank_values=True)


def _flask(response: BridgeResponse) -> Response:
    status, headers, data = response
    return Response(data, status=status, headers=[(k.decode(), v.decode()) for k, v in headers])


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
