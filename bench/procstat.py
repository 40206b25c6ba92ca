"""CPU time and resident memory of a process tree, read from /proc (Linux)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Usage:
    cpu_s: dict[int, float]
    """user + system CPU seconds of each live process in the tree, by pid."""
    rss_bytes: int
    """resident set size summed over the tree."""


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()  # fields from 3 (state) on; comm may hold spaces


def tree(root: int) -> list[int]:
    """``root`` and every live descendant."""
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit() and (fields := _stat_fields(int(entry.name))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, queue = [], [root]
    while queue:
        pid = queue.pop()
        found.append(pid)
        queue.extend(children.get(pid, []))
    return found


def _rss_bytes(pid: int) -> int:
    try:
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def usage(root: int) -> Usage:
    cpu: dict[int, float] = {}
    rss = 0
    for pid in tree(root):
        fields = _stat_fields(pid)
        if fields is None:
            continue
        cpu[pid] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime
        rss += _rss_bytes(pid)
    return Usage(cpu, rss)


def cpu_between(before: Usage, after: Usage) -> float:
    """CPU seconds the tree used between two readings (processes born in between count fully)."""
    return sum(cpu - before.cpu_s.get(pid, 0.0) for pid, cpu in after.cpu_s.items())
