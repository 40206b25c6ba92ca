"""The daemon's state directory: lock, pid, metadata, heartbeat and stop requests.

Files (all written atomically; readers never create or modify anything)::

    daemon.lock     held (flock, exclusive) by the running daemon for its whole life
    daemon.pid      the daemon's PID as a plain integer (as seen in its own PID namespace)
    daemon.json     pid, host, boot/namespace identity, instance_id, started_at, directories,
                    workers, version, status_url
    heartbeat.json  refreshed every second: wall-clock ``at``, draining, workers, readiness
    stop.request    left by ``tm daemon stop``; the daemon named in it drains and exits
    stop.ack        written by the daemon when it picked a stop request up
    daemon.log      the log, unless --log-file or --inherit-logs

The lock is what tells a live daemon from a dead one: flock locks are shared between a container
and its host on a Linux bind mount, and are released when the holder dies, whatever its PID.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tracemind.errors import TraceMindError
from tracemind.fsutil import dump_json, ensure_dir, open_or_create, read_regular, write_atomic

HEARTBEAT_INTERVAL_S = 1.0
HEARTBEAT_STALE_S = 5.0
STATE_FILE_MAX_BYTES = 1024 * 1024
"""daemon.json, heartbeat.json and the stop files are a few KiB; a larger one is damage."""


class StateDir:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.lock_path = root / "daemon.lock"
        self.pid_path = root / "daemon.pid"
        self.meta_path = root / "daemon.json"
        self.heartbeat_path = root / "heartbeat.json"
        self.stop_request_path = root / "stop.request"
        self.stop_ack_path = root / "stop.ack"
        self.log_path = root / "daemon.log"

    # -- the daemon's side ----------------------------------------------------------------------

    def prepare(self) -> None:
        ensure_dir(self.root)
        ensure_dir(self.root / "tmp")

    def write_json(self, path: Path, data: dict[str, Any]) -> None:
        write_atomic(path, dump_json(data), tmp_dir=self.root / "tmp", durable=False)

    def write_pid(self, pid: int) -> None:
        write_atomic(self.pid_path, f"{pid}\n".encode(), tmp_dir=self.root / "tmp", durable=False)

    def acquire_lock(self, timeout_s: float) -> int | None:
        """Take the daemon lock, waiting up to ``timeout_s``; returns the held fd, or None when
        another live daemon holds it. The fd must stay open for the daemon's whole life."""
        try:
            fd = open_or_create(self.lock_path, os.O_RDWR)  # 0660: others cannot open it to lock
        except OSError as exc:
            raise TraceMindError(
                f"{self.lock_path}: cannot open ({exc.strerror}) as uid {os.getuid()} "
                f"gid {os.getgid()}"
            ) from None
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.set_inheritable(fd, False)
                return fd
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise TraceMindError(f"{self.lock_path}: cannot lock ({exc.strerror})") from exc
            if time.monotonic() >= deadline:
                os.close(fd)
                return None
            time.sleep(0.05)

    # -- anyone's side (read-only) --------------------------------------------------------------

    def lock_held(self) -> bool | None:
        """Whether some process holds the daemon lock: True, False, or None when unknown (no
        lock file yet means False). Takes a shared lock for an instant, creating nothing."""
        try:
            # Never blocks: a FIFO put where the lock file should be opens at once (and then
            # cannot be locked, so the state is unknown).
            fd = os.open(self.lock_path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
        except FileNotFoundError:
            return False
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            return True if exc.errno in (errno.EAGAIN, errno.EACCES) else None
        finally:
            os.close(fd)  # closing releases the probe's shared lock
        return False

    def read_json(self, path: Path) -> dict[str, Any] | None:
        """The JSON object in ``path``; None when absent, unreadable or damaged — including
        anything that is not a regular file, which is never opened in a way that could block."""
        try:
            data = json.loads(read_regular(path, STATE_FILE_MAX_BYTES))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def meta(self) -> dict[str, Any] | None:
        return self.read_json(self.meta_path)

    def heartbeat(self) -> dict[str, Any] | None:
        return self.read_json(self.heartbeat_path)

    def clear_stop_request(self) -> None:
        for path in (self.stop_request_path, self.stop_ack_path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


@dataclass(frozen=True)
class Liveness:
    """What the state dir says about the daemon: ``state`` is running, unresponsive (lock held,
    heartbeat stale — e.g. a paused container), or stopped."""

    state: str
    lock_held: bool | None
    heartbeat_age_s: float | None
    meta: dict[str, Any] | None
    heartbeat: dict[str, Any] | None

    @property
    def running(self) -> bool:
        return self.state == "running"


def liveness(state: StateDir, now_s: float | None = None) -> Liveness:
    now_s = time.time() if now_s is None else now_s
    held = state.lock_held()
    meta = state.meta()
    beat = state.heartbeat()
    age = None
    if beat is not None and meta is not None and beat.get("instance_id") == meta.get("instance_id"):
        with contextlib.suppress(TypeError, ValueError):
            age = max(0.0, now_s - float(beat["at"]))
    fresh = age is not None and age <= HEARTBEAT_STALE_S and not beat.get("stopped")  # type: ignore[union-attr]
    if held is False:
        status = "stopped"
    elif fresh:
        status = "running"
    elif held:
        status = "unresponsive"
    else:
        status = "stopped"
    return Liveness(status, held, age, meta, beat)
