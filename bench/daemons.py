"""Draining a pre-seeded queue with real daemons (``tm daemon start``), timed from their spawn to
the last task's success in their logs.

Each daemon has a state dir of its own under the measurement's directory; every daemon gets the
same environment (one queue location). The clock starts just before the first ``tm daemon
start`` is spawned (all are spawned at once, as independent hosts would start them) and stops
at the last ``task succeeded`` (or, on the file backend, the last ``acks committed``: when the
last group of results became durable) found in any daemon's log.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bench.core import BenchError
from bench.tmlogs import TaskTimes

START_TIMEOUT_S = 60.0
POLL_S = 0.2
EXIT_TIMEOUT_S = 30.0
SUCCEEDED = b'"task succeeded"'


@dataclass(frozen=True)
class Drained:
    spawn_to_done_s: float
    """From spawning the first daemon to the last task's success (durable)."""
    window_s: float
    """From the first task started to the last task's success (durable)."""
    per_daemon: list[int]
    """How many tasks each daemon ran."""


def drain_with_daemons(
    tm: str,
    env: Mapping[str, str],
    work: Path,
    *,
    daemons: int,
    workers: int,
    tasks: int,
    timeout_s: float,
) -> Drained:
    """Start ``daemons`` daemons of ``workers`` workers each on the queue ``env`` names (holding
    ``tasks`` tasks and nothing else), wait until every task succeeded, stop them; their
    timings. BenchError if a daemon does not start or the queue is not drained in time."""
    states = [work / f"state-{i}" for i in range(daemons)]
    started_s = time.time()
    starts = [
        subprocess.Popen(
            [tm, "daemon", "start", "--workers", str(workers), "--state-dir", str(state)],
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for state in states
    ]
    try:
        for proc in starts:
            _, err = proc.communicate(timeout=START_TIMEOUT_S)
            if proc.returncode != 0:
                raise BenchError(f"tm daemon start exited {proc.returncode}: {err[-500:]!r}")
        _wait_for(states, tasks, started_s + timeout_s)
    finally:
        for proc in starts:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
        for state in states:
            _stop(tm, env, state)
    times = [_times(state) for state in states]
    succeeded = sum(len(t.succeeded_s) for t in times)
    if succeeded != tasks:
        raise BenchError(f"daemon drain: {succeeded} of {tasks} tasks succeeded")
    last_s = max(t.last_done_s for t in times if t.succeeded_s)
    first_s = min(min(t.started_s.values()) for t in times if t.started_s)
    return Drained(last_s - started_s, last_s - first_s, [len(t.succeeded_s) for t in times])


def _log(state: Path) -> Path:
    return state / "daemon.log"


def _succeeded(state: Path) -> int:
    with contextlib.suppress(FileNotFoundError), open(_log(state), "rb") as log:
        return sum(1 for line in log if SUCCEEDED in line)
    return 0


def _wait_for(states: list[Path], tasks: int, deadline_s: float) -> None:
    while sum(_succeeded(state) for state in states) < tasks:
        if time.time() > deadline_s:
            raise BenchError(f"daemon drain: not every one of {tasks} tasks succeeded in time")
        time.sleep(POLL_S)


def _stop(tm: str, env: Mapping[str, str], state: Path) -> None:
    """``tm daemon stop``, then wait for the daemon's PID (from its pid file) to be gone: the
    command returns once the daemon acknowledged the stop, a moment before it exits. One still
    there after :data:`EXIT_TIMEOUT_S` is killed and reported."""
    subprocess.run(
        [tm, "daemon", "stop", "--state-dir", str(state)],
        env=dict(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=120,
        check=False,
    )
    try:
        pid = int((state / "daemon.pid").read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return
    deadline_s = time.monotonic() + EXIT_TIMEOUT_S
    while _alive(pid):
        if time.monotonic() > deadline_s:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            raise BenchError(f"daemon {pid} still ran {EXIT_TIMEOUT_S:g} s after tm daemon stop")
        time.sleep(POLL_S)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _times(state: Path) -> TaskTimes:
    with open(_log(state), "rb") as lines:
        return TaskTimes.from_lines(lines)
