"""Start and stop gunicorn as a child process, the way both of our HTTP servers run
(the status server and the webhook server).

The model: one gunicorn ``asgi`` worker (an asyncio event loop that holds every connection
while its request arrives, so slow or idle clients cost no thread) serving a Flask app through
:class:`tracemind.status.bridge.WsgiBridge` (complete requests run in a few threads).

Limits, the same for both servers:

- at most :data:`MAX_CONNECTIONS` open connections: the child's open-file limit is set to that
  plus :data:`RESERVED_FDS` (logs, the listening socket, files the app reads), so past it the
  event loop stops accepting (new connections wait in the listen backlog) instead of running
  out of descriptors for the app;
- an idle kept-alive connection is closed after :data:`KEEPALIVE_S`; a request whose body stops
  arriving for :data:`BODY_STALL_TIMEOUT_S` is answered 400 (the app never sees it). A client
  that never finishes its request *header* keeps its connection (it costs no thread) until it
  closes it or the limit is reached;
- a stop (SIGTERM) waits :data:`GRACEFUL_TIMEOUT_S` for requests in flight, then closes the
  rest, so clients that never finish a request do not delay it.
"""

from __future__ import annotations

import contextlib
import resource
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence

from tracemind.libc import die_with_parent

MAX_CONNECTIONS = 1000
RESERVED_FDS = 64
KEEPALIVE_S = 5
GRACEFUL_TIMEOUT_S = 3
BODY_STALL_TIMEOUT_S = 10
"""gunicorn's ``timeout``: under the asgi worker, the longest wait for the next piece of a body
(and how long the event loop may stay silent before the arbiter replaces the worker)."""
BACKLOG = 100
"""Connections the kernel queues before the worker accepts them: asyncio listens again with its
default of 100 whatever gunicorn's ``--backlog`` says, so this is the one that holds."""
STOP_TIMEOUT_S = GRACEFUL_TIMEOUT_S + 2.0


def gunicorn_argv(bind: str, app: str, tmp_dir: str | None = None) -> list[str]:
    """The command line serving ``app`` (``module:attribute``, an ASGI app) on ``bind``
    (``host:port`` or ``fd://N``), logging through :mod:`tracemind.status.gunicorn_conf`."""
    argv = [
        sys.executable, "-m", "gunicorn",
        "--bind", bind,
        "--backlog", str(BACKLOG),
        "--workers", "1",
        "--worker-class", "asgi",
        "--keep-alive", str(KEEPALIVE_S),
        "--timeout", str(BODY_STALL_TIMEOUT_S),
        "--graceful-timeout", str(GRACEFUL_TIMEOUT_S),
        "--no-control-socket",
        "--config", "python:tracemind.status.gunicorn_conf",
    ]  # fmt: skip
    if tmp_dir:
        argv += ["--worker-tmp-dir", tmp_dir]
    return [*argv, app]


def _limit_child() -> None:
    """In the child before exec: die with the parent, and cap open files (see module doc)."""
    die_with_parent()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = MAX_CONNECTIONS + RESERVED_FDS
    if hard != resource.RLIM_INFINITY:
        wanted = min(wanted, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def start_gunicorn(
    argv: Sequence[str], env: Mapping[str, str], pass_fds: Sequence[int] = ()
) -> subprocess.Popen[bytes]:
    """Spawn gunicorn (SIGKILLed by the kernel if this process dies)."""
    return subprocess.Popen(
        list(argv),
        env=dict(env),
        stdin=subprocess.DEVNULL,
        pass_fds=tuple(pass_fds),
        preexec_fn=_limit_child,
    )


def stop_gunicorn(process: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM, then SIGKILL after :data:`STOP_TIMEOUT_S`; returns once it has exited."""
    if process is None or process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
