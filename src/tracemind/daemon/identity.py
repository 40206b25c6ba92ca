"""Who a process is, and whether it is the daemon, proven from what a forger cannot write.

``daemon.json`` records the daemon's PID with its boot id, PID namespace and start time, but
whoever can write the state dir can write those too: copying another process's PID and start
time into it makes every field match. So a PID is signalled only after
:func:`verify_daemon` proved, from the kernel, that this very process holds the daemon's
lifetime lock (``daemon.lock``, an exclusive ``flock`` the daemon takes at start and holds until
it exits): its own ``/proc/PID/fdinfo`` lists the lock on an open descriptor of that file, or,
where that is not readable (another user's process), ``/proc/locks`` names the PID as the
holder. The recorded fields still say why a PID is *not* the daemon (another PID namespace,
another boot, a reused PID), which is what a refusal reports.

A daemon in another PID namespace (a container) cannot be proven from here: its recorded PID
names some other process (or none) on this side. It is stopped through the stop request it
answers in the state dir, never by a signal.
"""

from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def boot_id() -> str | None:
    return _read("/proc/sys/kernel/random/boot_id")


def pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def start_ticks(pid: int) -> int | None:
    """The process start time in clock ticks since boot (field 22 of /proc/PID/stat)."""
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = stat.rsplit(")", 1)[-1].split()
    with contextlib.suppress(IndexError, ValueError):
        return int(fields[19])
    return None


def in_container() -> bool:
    return Path("/.dockerenv").exists() or Path("/run/.containerenv").exists()


def describe_self() -> dict[str, Any]:
    """Identity fields recorded in daemon.json."""
    pid = os.getpid()
    return {
        "pid": pid,
        "host": socket.gethostname(),
        "boot_id": boot_id(),
        "pid_namespace": pid_namespace(),
        "start_ticks": start_ticks(pid),
        "in_container": in_container(),
    }


def is_same_process(recorded: dict[str, Any]) -> bool:
    """True when the recorded PID, seen from this process, has the recorded boot id, PID
    namespace and start time. Evidence against PID reuse only: the fields come from a file, so
    this proves nothing about who the process is (see :func:`verify_daemon`)."""
    return _differs(recorded) is None


# -- the lock: what proves a PID is the daemon --------------------------------------------------


def _flock_write_line(line: str) -> bool:
    """Whether a /proc/locks (or fdinfo ``lock:``) line describes an exclusive flock."""
    fields = line.split()
    return "FLOCK" in fields and "WRITE" in fields


def _holds_by_fdinfo(pid: int, target: os.stat_result) -> bool:
    """Whether ``pid`` has an open descriptor of ``target`` whose open file holds an exclusive
    flock on it. Raises PermissionError where /proc/PID/fd is not readable (another user's
    process) and FileNotFoundError when there is no such process."""
    for name in os.listdir(f"/proc/{pid}/fd"):
        info = _read(f"/proc/{pid}/fdinfo/{name}") or ""
        if not any(
            line.startswith("lock:") and _flock_write_line(line) for line in info.splitlines()
        ):
            continue
        try:
            st = os.stat(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
            return True
    return False


def lock_holders(lock_path: Path) -> list[int]:
    """The PIDs (as seen here) that ``/proc/locks`` names as holding an exclusive flock on
    ``lock_path``; empty when none is visible (free, held from another PID namespace, or a file
    system whose device numbers ``/proc/locks`` reports differently)."""
    try:
        target = os.stat(lock_path)
        table = Path("/proc/locks").read_text()
    except OSError:
        return []
    wanted = f"{os.major(target.st_dev):02x}:{os.minor(target.st_dev):02x}:{target.st_ino}"
    holders = []
    for line in table.splitlines():
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 15131 fe:00:2147601 0 EOF" (blocked waiters have "->")
        granted = len(fields) >= 6 and "->" not in fields and _flock_write_line(line)
        if granted and fields[5] == wanted and fields[4].isdigit() and int(fields[4]) > 0:
            holders.append(int(fields[4]))
    return holders


def holds_lock(pid: int, lock_path: Path) -> bool:
    """Whether process ``pid`` (as seen here) holds the exclusive flock on ``lock_path``."""
    try:
        target = os.stat(lock_path)
    except OSError:
        return False
    try:
        return _holds_by_fdinfo(pid, target)
    except FileNotFoundError:
        return False
    except PermissionError:
        return pid in lock_holders(lock_path)
    except OSError:
        return False


# -- the verdict --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """Whether the daemon recorded in daemon.json is proven to be a process here.

    ``proven``: its PID holds the daemon lock and matches the recorded identity; only then may
    it be signalled. Otherwise ``reason`` says what differs, and ``elsewhere`` whether that is
    because it runs in another PID namespace, boot or host (so it cannot be proven from here,
    which is no evidence against it)."""

    proven: bool
    reason: str
    elsewhere: bool = False


def _differs(recorded: dict[str, Any]) -> tuple[str, bool] | None:
    """What differs between the recorded identity and the process with that PID here (and
    whether the daemon is elsewhere), or None when all of it matches."""
    pid = recorded.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 1:
        return f"daemon.json records no usable pid ({pid!r})", False
    host = recorded.get("host")
    here_boot = boot_id()
    if recorded.get("boot_id") is None or recorded.get("boot_id") != here_boot:
        where = f"host {host}" if host and host != socket.gethostname() else "another boot"
        return f"it was recorded on {where} (boot id differs)", True
    if recorded.get("pid_namespace") is None or recorded.get("pid_namespace") != pid_namespace():
        return (
            f"it runs in another PID namespace ({recorded.get('pid_namespace')}; "
            f"here {pid_namespace()}), where pid {pid} names a different process",
            True,
        )
    ticks = start_ticks(pid)
    if ticks is None:
        return f"no process {pid} exists here", False
    if recorded.get("start_ticks") != ticks:
        return (
            f"process {pid} started at clock tick {ticks}, not at the recorded "
            f"{recorded.get('start_ticks')} (the pid was reused, or daemon.json is stale)",
            False,
        )
    return None


def verify_daemon(recorded: dict[str, Any], lock_path: Path) -> Verdict:
    """Prove that the daemon ``recorded`` (daemon.json) is a live process here holding
    ``lock_path``; see :class:`Verdict`."""
    differs = _differs(recorded)
    if differs is not None:
        return Verdict(False, differs[0], elsewhere=differs[1])
    pid = int(recorded["pid"])
    if holds_lock(pid, lock_path):
        return Verdict(True, "")
    return Verdict(False, f"process {pid} does not hold {lock_path.name}, so it is not the daemon")


def held_by(lock_path: Path) -> str:
    """`` by pid 12 (sleep, uid 1000)`` naming the visible holders of ``lock_path`` (see
    :func:`lock_holders`), or "" when none is visible: for messages."""
    holders = lock_holders(lock_path)
    return f" by {describe_pids(holders)}" if holders else ""


def describe_pids(pids: list[int]) -> str:
    """``pid 12 (sleep, uid 1000)``-style names of processes seen here, for messages."""
    names = []
    for pid in pids:
        comm = _read(f"/proc/{pid}/comm")
        uid = None
        for line in (_read(f"/proc/{pid}/status") or "").splitlines():
            if line.startswith("Uid:"):
                uid = line.split()[1]
        details = ", ".join(d for d in (comm, f"uid {uid}" if uid else None) if d)
        names.append(f"pid {pid}" + (f" ({details})" if details else ""))
    return ", ".join(names)
