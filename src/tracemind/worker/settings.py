"""What a worker pool and its workers run with: one settings object each, built once.

:class:`PoolSettings` holds the :class:`WorkerSettings` its workers share; the daemon's settings
(:class:`tracemind.daemon.settings.DaemonSettings`) hold the pool's. A spawned worker receives
its pool's worker settings serialized once (:meth:`WorkerSpec.to_json`) in its environment, which
is where the full location (with a Redis password, if any) may travel: never argv or a file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from tracemind.backend.location import Location


@dataclass(frozen=True)
class WorkerSettings:
    """What every worker of a pool runs with."""

    location: Location
    durable: bool
    runtime: str
    """``module:factory`` of the object that executes tasks."""
    lease_s: float
    log_file: str | None
    """Where workers log (None: the pool's standard output)."""
    report_idle: bool = False
    """Workers report when they find nothing to do (a burst pool stops on it)."""
    nice: int = 0
    """How much nicer than the pool a worker runs (``TM_WORKER_NICE``, see
    :func:`tracemind.config.worker_nice`)."""

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON values; the location as its full text (see the module doc)."""
        return {
            "location": str(self.location),
            "durable": self.durable,
            "runtime": self.runtime,
            "lease_s": self.lease_s,
            "log_file": self.log_file,
            "report_idle": self.report_idle,
            "nice": self.nice,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorkerSettings:
        return cls(**{**data, "location": Location.parse(data["location"])})


@dataclass(frozen=True)
class PoolSettings:
    """A pool of ``size`` workers; every consumer id of it starts with ``instance_id``."""

    size: int
    instance_id: str
    worker: WorkerSettings
    fork: bool = False
    """Fork workers from this process while it runs one thread (else spawn them)."""

    def worker_spec(self, consumer_id: str, slot: int) -> WorkerSpec:
        """What the worker process in ``slot`` of this pool is told (it runs as this process's
        child)."""
        return WorkerSpec(self.worker, consumer_id, os.getpid(), (slot, self.size))


@dataclass(frozen=True)
class WorkerSpec:
    """One worker process: its pool's worker settings, its consumer id, its parent and its
    share of the queue (its slot, the pool's size: see
    :meth:`~tracemind.queue.protocol.TaskQueue.take_share`)."""

    settings: WorkerSettings
    consumer_id: str
    parent_pid: int
    share: tuple[int, int] = (0, 1)

    def to_json(self) -> str:
        return json.dumps(
            {
                "settings": self.settings.to_dict(),
                "consumer_id": self.consumer_id,
                "parent_pid": self.parent_pid,
                "share": list(self.share),
            }
        )

    @classmethod
    def from_json(cls, text: str) -> WorkerSpec:
        data = json.loads(text)
        index, count = data["share"]
        return cls(
            WorkerSettings.from_dict(data["settings"]),
            data["consumer_id"],
            data["parent_pid"],
            (int(index), int(count)),
        )
