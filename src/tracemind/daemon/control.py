"""Controlling a daemon from any process that sees its state dir: start (detached), stop, ps.

Nothing here trusts a PID alone: liveness comes from the state-dir lock and the heartbeat, a stop
goes through a stop request the daemon acknowledges, and a PID is signalled only after
:func:`~tracemind.daemon.identity.is_same_process` confirmed it is the recorded daemon.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tracemind.daemon.identity import is_same_process
from tracemind.daemon.state import StateDir, liveness
from tracemind.errors import TraceMindError

START_TIMEOUT_S = 30.0
TAIL_LINES = 15


class StartFailed(TraceMindError):
    """The detached daemon exited (or never answered) before its first heartbeat."""


def start_detached(
    state: StateDir, foreground_argv: Sequence[str], log_file: Path | None, instance_id: str
) -> tuple[int, bool]:
    """Launch ``tm daemon start --foreground …`` in a new session and wait for its first
    heartbeat. Returns the daemon PID and whether it is the one launched here (False: another
    start won the race for the lock); raises StartFailed with the log path and last lines."""
    state.prepare()
    env = dict(os.environ, TM_DAEMON_INSTANCE_ID=instance_id)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        out: Any = open(log_file, "ab")  # noqa: SIM115 - handed to the child, closed below
    else:
        out = None  # --inherit-logs: the daemon writes to our stdout/stderr
    try:
        child = subprocess.Popen(
            [sys.executable, "-m", "tracemind", *foreground_argv],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT if out is not None else None,
            start_new_session=True,
            env=env,
        )
    finally:
        if out is not None:
            out.close()
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        beat = state.heartbeat()
        if beat is not None and beat.get("instance_id") == instance_id:
            return child.pid, True
        code = child.poll()
        if code is not None:
            if code == 0:  # another daemon held the lock; it reported itself
                meta = state.meta() or {}
                return int(meta.get("pid", 0)), False
            raise StartFailed(_failure_message(log_file, f"daemon exited with code {code}"))
        time.sleep(0.05)
    raise StartFailed(_failure_message(log_file, f"no heartbeat within {START_TIMEOUT_S:g} s"))


def _failure_message(log_file: Path | None, what: str) -> str:
    if log_file is None:
        return f"{what}; see the output above"
    try:
        lines = log_file.read_text(errors="replace").splitlines()[-TAIL_LINES:]
    except OSError:
        lines = []
    tail = "".join(f"\n    {line}" for line in lines)
    return f"{what}; log: {log_file}{tail}"


def request_stop(state: StateDir, timeout_s: float, *, force: bool, by: str) -> str:
    """Ask the daemon to drain and exit; wait up to ``timeout_s`` for its lock to be released.

    Returns a one-line outcome. After the timeout, with ``force``, a daemon in this PID namespace
    (verified by identity) is killed with its process group; one elsewhere cannot be.
    """
    live = liveness(state)
    if live.lock_held is False:
        return "daemon is not running"
    meta = live.meta or {}
    state.write_json(
        state.stop_request_path,
        {"instance_id": meta.get("instance_id"), "requested_at": time.time(), "by": by},
    )
    local = is_same_process(meta)
    beat = live.heartbeat or {}
    draining = beat.get("instance_id") == meta.get("instance_id") and bool(beat.get("draining"))
    if local and not draining:  # to a draining daemon a second SIGTERM means "kill the workers"
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(meta["pid"]), signal.SIGTERM)
    if _wait_unlocked(state, timeout_s):
        return f"daemon stopped (pid {meta.get('pid')})"
    if not force:
        raise TraceMindError(
            f"daemon (pid {meta.get('pid')}) still running after {timeout_s:g} s (--no-force)"
        )
    if not local:
        raise TraceMindError(
            f"daemon (pid {meta.get('pid')} on {meta.get('host')}) did not stop within "
            f"{timeout_s:g} s and runs in another PID namespace or host: it cannot be killed "
            "from here (stop its container instead)"
        )
    pid = int(meta["pid"])
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)  # the daemon leads its own session and process group
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    _wait_unlocked(state, 5.0)
    _return_leases(meta)
    return f"daemon killed after {timeout_s:g} s (pid {pid}); its leases were returned"


def _wait_unlocked(state: StateDir, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if state.lock_held() is False:
            return True
        time.sleep(0.05)
    return state.lock_held() is False


def _return_leases(meta: dict[str, Any]) -> None:
    from tracemind import config
    from tracemind.stores import open_stores

    dirs = meta.get("dirs") or {}
    if not dirs or not meta.get("instance_id"):
        return
    data = config.DataDirs(Path(dirs["queue"]), Path(dirs["idempotency"]), Path(dirs["dlq"]))
    with contextlib.suppress(TraceMindError, OSError):
        open_stores(data, durable=config.durable()).queue.recover([f"{meta['instance_id']}-"])
