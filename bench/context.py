"""What every figure receives: the programs of both sides, sizes, rounds and scratch space."""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

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

    def new_dir(self, prefix: str) -> Path:
        """A fresh, empty directory for one measurement."""
        return Path(tempfile.mkdtemp(prefix=prefix, dir=self.scratch))

    def say(self, message: str) -> None:
        print(f"bench: {message}", file=sys.stderr, flush=True)
