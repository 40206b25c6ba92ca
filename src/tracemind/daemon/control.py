"""Controlling a daemon from any process that sees its state dir: start (detached), stop, ps.

Nothing here trusts daemon.json: liveness comes from the state-dir lock and the heartbeat, a stop
goes through a stop request the daemon acknowledges, and a PID is signalled only after
:func:`~tracemind.daemon.identity.verify_daemon` proved from the kernel that it holds the
daemon's lock. "Already running" is said only of a daemon that answers (:func:`running_daemon`).
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

from tracemind.backend.location import DIR_SETTINGS, Location
from tracemind.daemon.identity import Verdict, held_by, verify_daemon
from tracemind.daemon.state import Liveness, StateDir, liveness
from tracemind.errors import TraceMindError
from tracemind.fsutil import open_append_regular

START_TIMEOUT_S = 30.0
TAIL_LINES = 15
ANSWER_WAIT_S = 10.0
"""How long a start waits for the first heartbeat of a daemon that holds the lock but has not
beaten yet (it is starting) before it calls the lock's holder a process that does not answer."""


class StartFailed(TraceMindError):
    """The detached daemon exited (or never answered) before its first heartbeat."""


def start_detached(
    state: StateDir,
    foreground_argv: Sequence[str],
    location: Location,
    log_file: Path | None,
    instance_id: str,
) -> tuple[int, bool]:
    """Launch ``tm daemon start --foreground …`` on ``location`` in a new session and wait for
    its first heartbeat. Returns the daemon PID and whether it is the one launched here (False: another
    start won the race for the lock); raises StartFailed with the log path and last lines."""
    state.prepare()
    env = dict(os.environ, TM_DAEMON_INSTANCE_ID=instance_id)
    # Where the data is travels in the environment only (never argv, which `ps` shows: a
    # location may hold a password), as the one location string that alone decides it.
    for _, _, variable in DIR_SETTINGS:
        env.pop(variable, None)
    env["TM_QUEUE_URL"] = str(location)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        try:  # (a FIFO or directory at the log path fails here instead of hanging `start`)
            out: Any = os.fdopen(open_append_regular(log_file), "ab")
        except (OSError, ValueError) as exc:
            raise StartFailed(f"{exc}: the daemon's log must be a regular file") from exc
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

    Returns a one-line outcome. The stop request in the state dir reaches a daemon wherever it
    runs. A daemon proven here (:func:`~tracemind.daemon.identity.verify_daemon`) is also sent
    SIGTERM, and after the timeout, with ``force``, SIGKILL with its process group. Anything not
    proven is never signalled: after the timeout the error says what differs.
    """
    live = liveness(state)
    if live.lock_held is False:
        return "daemon is not running"
    meta = live.meta or {}
    try:
        state.prepare()
        state.write_json(
            state.stop_request_path,
            {"instance_id": meta.get("instance_id"), "requested_at": time.time(), "by": by},
        )
    except (OSError, TraceMindError) as exc:
        why = getattr(exc, "strerror", None) or exc
        raise TraceMindError(
            f"{state.stop_request_path}: cannot write the stop request ({why})"
        ) from None
    verdict = verify_daemon(meta, state.lock_path)
    beat = live.heartbeat or {}
    draining = beat.get("instance_id") == meta.get("instance_id") and bool(beat.get("draining"))
    if verdict.proven and not draining:  # to a draining daemon a second SIGTERM means "kill"
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(meta["pid"]), signal.SIGTERM)
    if _wait_unlocked(state, timeout_s):
        return f"daemon stopped (pid {meta.get('pid')})"
    if not force:
        unproven = "" if verdict.proven else f"; it was not signalled: {verdict.reason}"
        raise TraceMindError(
            f"daemon (pid {meta.get('pid')}) still running after {timeout_s:g} s (--no-force)"
            + unproven
        )
    verdict = verify_daemon(meta, state.lock_path)  # again: it may have exited meanwhile
    if not verdict.proven:
        if state.lock_held() is False:
            return f"daemon stopped (pid {meta.get('pid')})"
        raise TraceMindError(_not_signalled(meta, state.lock_path, timeout_s, verdict))
    pid = int(meta["pid"])
    with contextlib.suppress(ProcessLookupError):
        if os.getpgid(pid) == pid:  # a detached daemon leads its own session and process group
            os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    _wait_unlocked(state, 5.0)
    _return_leases(meta)
    return f"daemon killed after {timeout_s:g} s (pid {pid}); its leases were returned"


def _not_signalled(
    meta: dict[str, Any], lock_path: Path, timeout_s: float, verdict: Verdict
) -> str:
    where = f"pid {meta.get('pid')}" + (f" on {meta['host']}" if meta.get("host") else "")
    if verdict.elsewhere:
        advice = "stop its container instead"
    else:
        advice = f"the lock is held{held_by(lock_path) or ' by a process not visible here'}"
        advice += ", which was not signalled"
    return (
        f"daemon ({where}) did not stop within {timeout_s:g} s and cannot be killed from here: "
        f"{verdict.reason}; {advice}"
    )


def running_daemon(state: StateDir, wait_s: float = ANSWER_WAIT_S) -> int | None:
    """The PID (as recorded) of the live daemon of ``state``, or None when no process holds its
    lock. Raises TraceMindError (exit 1, one line naming the holder when it is visible) when
    the lock is held but no daemon answers.

    A daemon answers when its heartbeat is fresh, belongs to the run daemon.json describes, and
    — unless daemon.json places it in another PID namespace or host — its PID is proven to hold
    the lock. A daemon that just took the lock has not rewritten daemon.json or beaten yet, so
    the holder is given up to ``wait_s`` to answer; only a recorded daemon proven to hold the
    lock whose heartbeat went stale (paused, hung) is reported at once."""
    deadline_s = time.monotonic() + wait_s
    while True:
        live = liveness(state)
        if live.lock_held is False:
            return None
        if live.lock_held is None:
            raise TraceMindError(
                f"{state.lock_path}: cannot tell whether a daemon holds it (uid {os.getuid()} "
                f"gid {os.getgid()} cannot open or lock it; is this user in the data's group?)"
            )
        verdict = verify_daemon(live.meta or {}, state.lock_path)
        why = _no_answer(live, verdict)
        if why is None:
            return int((live.meta or {}).get("pid") or 0)
        stopping = bool((live.heartbeat or {}).get("stopped"))  # it releases the lock next
        hung = verdict.proven and live.state == "unresponsive" and not stopping
        if hung or time.monotonic() >= deadline_s:
            raise TraceMindError(_busy_message(state, why))
        time.sleep(0.1)


def _no_answer(live: Liveness, verdict: Verdict) -> str | None:
    """Why the lock's holder does not count as a live daemon, or None when it does."""
    if live.heartbeat_age_s is None:
        return "no heartbeat of the daemon daemon.json describes"
    if (live.heartbeat or {}).get("stopped"):
        return "the last heartbeat says the daemon stopped"
    if not live.running:
        return f"its heartbeat is {live.heartbeat_age_s:.0f} s old (unresponsive)"
    if verdict.proven or verdict.elsewhere:
        return None
    return verdict.reason


def _busy_message(state: StateDir, why: str) -> str:
    return (
        f"{state.lock_path} is held{held_by(state.lock_path)}, but no daemon answers ({why}); not starting another: "
        "see `tm daemon ps`, and stop the holder if it is not a TraceMind daemon"
    )


def _wait_unlocked(state: StateDir, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if state.lock_held() is False:
            return True
        time.sleep(0.05)
    return state.lock_held() is False


def _return_leases(meta: dict[str, Any]) -> None:
    from tracemind import config
    from tracemind.backend import open_backend
    from tracemind.daemon.recorded import recorded_location

    location = recorded_location(meta)
    if location is None or not meta.get("instance_id"):
        return
    with contextlib.suppress(TraceMindError, OSError):
        backend = open_backend(location, durable=config.durable())
        backend.queue.recover([f"{meta['instance_id']}-"])
