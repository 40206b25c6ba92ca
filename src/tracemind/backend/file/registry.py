"""The registry: every daemon and every ``tm workers start`` pool that serves a queue, kept in
the queue itself, so any process that can read the queue sees who serves it — a daemon in a
container and one on its host, or several daemons sharing one queue to scale.

Layout::

    <queue-dir>/registry/{instance_id}.json   rewritten every heartbeat, removed on a clean exit

A registration whose heartbeat is older than :data:`STALE_S` counts as gone (its process died,
or is paused); one older than :data:`FORGET_S` is removed by the next process that registers.
Heartbeats are wall-clock epoch seconds: the same clock on both sides of a container boundary.
"""

from __future__ import annotations

import contextlib
import json
import os
import time

from tracemind.backend.registration import FORGET_S, STALE_S
from tracemind.errors import QueueError
from tracemind.fsutil import dump_json, ensure_dir, read_regular, scan_entries, write_atomic

REGISTRY_DIR = "registry"
TYPE_CHECKING = False  # (`tm enqueue` reads the registry: no `typing` on its path)
if TYPE_CHECKING:
    from typing import Any

    from tracemind.clock import Clock
MAX_ENTRY_BYTES = 64 * 1024


class Registry:
    """The registrations of one queue root."""

    def __init__(
        self, queue_root: str | os.PathLike[str], tmp_dir: str, clock: Clock = time.time
    ) -> None:
        self.path = os.path.join(os.fspath(queue_root), REGISTRY_DIR)
        self.tmp_dir = tmp_dir
        self.clock = clock

    def register(self, entry: dict[str, Any]) -> None:
        """Write (or refresh) the registration ``entry``, stamped with the heartbeat time. A
        registry that cannot be written is not an error: the registration is a courtesy to
        readers, never needed for correctness."""
        instance_id = str(entry["instance_id"])
        stamped = {**entry, "heartbeat_at": self.clock()}
        with contextlib.suppress(QueueError, OSError):
            ensure_dir(self.path)
            ensure_dir(self.tmp_dir)  # (a first registration may come before any task)
            write_atomic(
                os.path.join(self.path, f"{instance_id}.json"),
                dump_json(stamped),
                tmp_dir=self.tmp_dir,
                durable=False,
            )

    def deregister(self, instance_id: str) -> None:
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(self.path, f"{instance_id}.json"))

    def live(self, now_s: float | None = None) -> list[dict[str, Any]]:
        """Every registration with a fresh heartbeat, oldest first, each with its
        ``heartbeat_age_s``; read-only."""
        now_s = self.clock() if now_s is None else now_s
        found = []
        for entry in self._entries():
            age_s = now_s - entry["heartbeat_at"]
            if age_s <= STALE_S:
                found.append({**entry, "heartbeat_age_s": round(max(age_s, 0.0), 3)})
        return sorted(found, key=lambda e: (str(e.get("started_at")), str(e["instance_id"])))

    def forget_stale(self, now_s: float | None = None) -> int:
        """Remove registrations whose heartbeat stopped more than :data:`FORGET_S` ago."""
        now_s = self.clock() if now_s is None else now_s
        removed = 0
        for entry in self._entries():
            if now_s - entry["heartbeat_at"] > FORGET_S:
                self.deregister(str(entry["instance_id"]))
                removed += 1
        return removed

    def _entries(self) -> list[dict[str, Any]]:
        entries = []
        for name, regular in scan_entries(self.path):
            if not (regular and name.endswith(".json")):
                continue
            try:
                entry = json.loads(read_regular(os.path.join(self.path, name), MAX_ENTRY_BYTES))
            except (OSError, ValueError):
                continue
            beat = entry.get("heartbeat_at") if isinstance(entry, dict) else None
            if isinstance(beat, int | float) and isinstance(entry.get("instance_id"), str):
                entries.append(entry)
        return entries
