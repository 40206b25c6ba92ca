"""Who a process is, in a way that survives PID namespaces: boot id, PID namespace, start time.

A PID recorded inside a container names some other process on the host (and a quickly restarted
container even reuses the same PID-namespace id), so a PID is only ever signalled after
:func:`is_same_process` confirmed that the PID, seen from here, is the very process recorded.
"""

from __future__ import annotations

import contextlib
import os
import socket
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
    """True only when the recorded PID, seen from this process, is the recorded process."""
    pid = recorded.get("pid")
    if not isinstance(pid, int) or pid <= 1:
        return False
    return (
        recorded.get("boot_id") is not None
        and recorded.get("boot_id") == boot_id()
        and recorded.get("pid_namespace") is not None
        and recorded.get("pid_namespace") == pid_namespace()
        and recorded.get("start_ticks") is not None
        and recorded.get("start_ticks") == start_ticks(pid)
    )
