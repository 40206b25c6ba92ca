"""What every figure receives: the programs of both sides, sizes, rounds and scratch space."""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.env import Programs


@dataclass(frozen=True)
class Sizes:
    cold_start_samples: int
    enqueue_tasks: int
    claim_ack_tasks: int
    disk_ops: int
    drain_tasks: int
    pickup_samples: int
    idle_s: float
    status_window_s: float
    status_seed_tasks: int
    redis_tasks: int
    """Tasks per enqueue loop and per drain in the Redis figure (the issue's 10,000)."""

    @classmethod
    def full(cls, rounds: int) -> Sizes:
        return cls(
            cold_start_samples=4 * rounds,
            enqueue_tasks=5000,
            claim_ack_tasks=5000,
            disk_ops=2000,
            drain_tasks=2000,
            pickup_samples=200,
            idle_s=60.0,
            status_window_s=10.0,
            status_seed_tasks=100_000,  # outlasts the window at ~8,000 tasks/s
            redis_tasks=10_000,
        )

    @classmethod
    def quick(cls, rounds: int) -> Sizes:
        return cls(
            cold_start_samples=rounds + 1,
            enqueue_tasks=200,
            claim_ack_tasks=200,
            disk_ops=100,
            drain_tasks=100,
            pickup_samples=10,
            idle_s=3.0,
            status_window_s=1.0,
            status_seed_tasks=8_000,
            redis_tasks=100,
        )


@dataclass(frozen=True)
class BacklogSizes:
    """Sizes of the backlog figures (8-12): a deep queue, a shallow one, the drain windows."""

    depth: int
    """Tasks in the deep backlog (the issue's figure: 1,000,000)."""
    shallow: int
    """Tasks in the shallow backlog the deep drain rate is compared with (10,000)."""
    skip: int
    """Tasks completed before the first window opens (start-up is never in a window)."""
    window: int
    """Tasks per drain window at depth."""
    windows: int
    """Consecutive windows taken at depth in each round (the median of all rounds' windows is
    the deep rate)."""
    build_chunk: int
    """Tasks per ``submit_many`` call while building a backlog. A batch's tasks are all due at
    its submission time, so this is also how many tasks share one bucket of ``pending/``."""
    one_batch: int
    """Tasks of the backlog enqueued as one ``tm enqueue --inputs`` batch (one bucket)."""
    inspect_samples: int
    """Whole-process runs of each inspection command per queue."""
    probe_window_s: float
    """How long ``/status`` and ``/metrics`` are requested at depth."""
    idle_windows: int
    idle_window_s: float
    dead: int
    """Dead letters for the DLQ figure (100,000)."""
    keyed_batch: int
    """Tasks in the batch with and without idempotency keys (10,000)."""
    enqueue_tasks: int
    """Tasks per enqueue measurement without scratch isolation."""
    other_work_files: int
    """Files created and deleted just before each measurement without isolation."""
    retention_tasks: int = 20_000
    """Keyed tasks run, then measured on disk before and after a retention pass (figure 14)."""

    @classmethod
    def full(cls, depth: int | None = None) -> BacklogSizes:
        return cls(
            depth=depth or 1_000_000,
            shallow=10_000,
            skip=1_000,
            window=20_000,
            windows=1,
            build_chunk=10_000,
            one_batch=200_000,
            inspect_samples=15,
            probe_window_s=20.0,
            idle_windows=3,
            idle_window_s=20.0,
            dead=100_000,
            keyed_batch=10_000,
            enqueue_tasks=5_000,
            other_work_files=5_000,
        )

    @classmethod
    def quick(cls, depth: int | None = None) -> BacklogSizes:
        return cls(
            depth=depth or 12_000,
            shallow=2_000,
            skip=200,
            window=2_000,
            windows=2,
            build_chunk=2_000,
            one_batch=6_000,
            inspect_samples=3,
            probe_window_s=1.0,
            idle_windows=1,
            idle_window_s=2.0,
            dead=2_000,
            keyed_batch=500,
            enqueue_tasks=200,
            other_work_files=500,
            retention_tasks=500,
        )


@dataclass(frozen=True)
class Context:
    programs: Programs
    sizes: Sizes
    rounds: int
    scratch: Path
    """This run's directory for data (on the file system being measured); removed as a whole
    at the end of the run, never between measurements: on ext4 without a journal, inodes freed
    in the last minute make every new file's allocation slower, which would charge one side's
    clean-up to the next measurement."""
    backlog: BacklogSizes = field(default_factory=BacklogSizes.full)
    shared: dict[str, Any] = field(default_factory=dict)
    """What one figure built for another in the same run (the deep backlog, see
    :mod:`bench.backlog`)."""

    def new_dir(self, prefix: str) -> Path:
        """A fresh, empty directory for one measurement."""
        return Path(tempfile.mkdtemp(prefix=prefix, dir=self.scratch))

    def say(self, message: str) -> None:
        print(f"bench: {message}", file=sys.stderr, flush=True)
