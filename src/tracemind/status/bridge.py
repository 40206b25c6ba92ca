"""Serve a WSGI app (Flask) from gunicorn's asyncio ``asgi`` worker, with bounded threads.

Why: under gunicorn's thread workers a client that sends half a request header holds a thread
until it finishes or disconnects, so a few slow clients starve the probes. Under the ``asgi``
worker every connection lives in one asyncio event loop until its request is complete (headers
and body), costing no thread; only complete requests reach the app, each run in a pool of
``threads`` threads.

Contract of :class:`WsgiBridge`:

- ``http`` scopes: ``precheck`` (if given) sees the environ before the body is read, on the
  event loop (it must not block); a response from it is sent at once with ``Connection: close``
  and the body is never read. Otherwise the body is read whole (at most ``max_body_bytes``, else
  413; a client that disconnects or stalls before sending all of it gets 400 where it can still
  read one, and the app is not called), then the WSGI app runs in the pool and its response is
  sent whole (status bodies and webhook answers are small);
- ``lifespan`` scopes are acknowledged; other scope types are refused;
- the environ follows PEP 3333; repeated request headers are joined with ``", "``, except that
  the raw header list is also passed as ``tracemind.raw_headers`` (lower-case names, in order)
  for apps that must see repeats.
"""

from __future__ import annotations

import asyncio
import io
import sys
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
Response = tuple[int, list[tuple[bytes, bytes]], bytes]
Precheck = Callable[[dict[str, Any]], Response | None]

RAW_HEADERS_KEY = "tracemind.raw_headers"


class WsgiBridge:
    """An ASGI app that runs ``app`` (WSGI) in ``threads`` threads; see the module docstring."""

    def __init__(
        self,
        app: WsgiApp,
        *,
        threads: int,
        max_body_bytes: int,
        precheck: Precheck | None = None,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.precheck = precheck
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="tm-http")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            raise ValueError(f"unsupported ASGI scope type {scope['type']!r}")
        early = None if self.precheck is None else self.precheck(wsgi_environ(scope, b""))
        if early is not None:
            status, headers, data = early
            headers = [*headers, (b"connection", b"close")]
        else:
            status, headers, data = await self._respond(scope, receive)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": data})

    async def _respond(self, scope: Scope, receive: Receive) -> Response:
        body = await self._read_body(receive)
        if body is None:
            return plain_response(413, b"request body too large\n")
        if isinstance(body, str):
            return plain_response(400, body.encode())
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._run, wsgi_environ(scope, body))

    async def _read_body(self, receive: Receive) -> bytes | str | None:
        """The whole body; None past ``max_body_bytes``; a reason (str) when it was cut short."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return "request body shorter than its Content-Length\n"
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)

    def _run(self, environ: dict[str, Any]) -> Response:
        started: list[Any] = []

        def start_response(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Any:
            started[:] = [status, headers]
            return lambda data: None  # the legacy write() callable; our apps never use it

        result = self.app(environ, start_response)
        try:
            data = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        status_line, header_list = started
        headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in header_list]
        return int(status_line.split(" ", 1)[0]), headers, data


def wsgi_environ(scope: Scope, body: bytes) -> dict[str, Any]:
    """The PEP 3333 environ of an ASGI ``http`` scope whose body is ``body``."""
    server = scope.get("server") or ("localhost", 80)
    client = scope.get("client") or ("", 0)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": scope.get("root_path", "").encode("utf-8").decode("latin-1"),
        "PATH_INFO": scope["path"].encode("utf-8").decode("latin-1"),
        "QUERY_STRING": scope.get("query_string", b"").decode("latin-1"),
        "SERVER_NAME": str(server[0]),
        "SERVER_PORT": str(server[1]),
        "SERVER_PROTOCOL": f"HTTP/{scope.get('http_version', '1.1')}",
        "REMOTE_ADDR": str(client[0]),
        "REMOTE_PORT": str(client[1]),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    raw: list[tuple[str, str]] = []
    for name_bytes, value_bytes in scope.get("headers", []):
        name, value = name_bytes.decode("latin-1").lower(), value_bytes.decode("latin-1")
        raw.append((name, value))
        key = name.upper().replace("-", "_")
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            key = f"HTTP_{key}"
        environ[key] = f"{environ[key]}, {value}" if key in environ else value
    environ[RAW_HEADERS_KEY] = raw
    return environ


def plain_response(status: int, text: bytes) -> Response:
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(text)).encode())]
    return status, headers, text


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
