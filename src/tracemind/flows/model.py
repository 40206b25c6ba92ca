"""The parsed flow: steps, edges, retry policy. Plain frozen data; validation lives in `validation`.

A :class:`Flow` is only ever built by :func:`tracemind.flows.parse_flow`, which guarantees the
invariants documented on it; constructing one by hand skips those checks.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import random


class StepKind(enum.StrEnum):
    """What a step does when the runner reaches it."""

    TASK = "task"
    """Call the hook as ``fn(ctx, state)``; a returned mapping is merged into the state."""
    SWITCH = "switch"
    """Call the hook; it returns a label that picks the outgoing edge whose ``when`` equals it."""
    FINISH = "finish"
    """End the run (after running the hook like a task, if the step has one)."""


@dataclass(frozen=True)
class Step:
    """One node of the flow; ``hook`` is an import spec (``pkg.mod.func`` or ``pkg.mod:func``)."""

    id: str
    kind: StepKind
    hook: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The normalized mapping form (the hook always under ``hooks.run``)."""
        out: dict[str, Any] = {"id": self.id, "kind": self.kind.value}
        if self.hook is not None:
            out["hooks"] = {"run": self.hook}
        return out


@dataclass(frozen=True)
class Edge:
    """A transition; ``when`` is the switch label it answers, ``is_default`` the switch fallback."""

    source: str
    target: str
    when: str | None = None
    is_default: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The normalized mapping form (``from``/``to``, plus ``when`` or ``default`` if set)."""
        out: dict[str, Any] = {"from": self.source, "to": self.target}
        if self.when is not None:
            out["when"] = self.when
        if self.is_default:
            out["default"] = True
        return out


def _require_finite(name: str, value: object, minimum: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or value < minimum:
        raise ValueError(f"{name} must be a finite number >= {minimum:g}, got {value!r}")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how far apart a failed task is retried.

    ``max_attempts`` counts the first try (1 = never retry). The delay after failed attempt ``n``
    is ``base_ms * factor**(n-1)`` plus a uniform jitter in ``[0, jitter_ms]``. Invalid values
    raise ``ValueError`` at construction.
    """

    max_attempts: int = 3
    base_ms: float = 200.0
    factor: float = 2.0
    jitter_ms: float = 100.0

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
            raise ValueError(f"max_attempts must be an integer, got {self.max_attempts!r}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        _require_finite("base_ms", self.base_ms, 0.0)
        _require_finite("factor", self.factor, 1.0)
        _require_finite("jitter_ms", self.jitter_ms, 0.0)

    def delay_ms(self, attempt: int, rng: random.Random) -> float:
        """Milliseconds to wait after failed attempt ``attempt`` (1-based) before the next one."""
        if attempt < 1:
            raise ValueError(f"attempt is 1-based, got {attempt}")
        return self.base_ms * self.factor ** (attempt - 1) + rng.uniform(0.0, self.jitter_ms)

    def to_dict(self) -> dict[str, Any]:
        """The mapping form used in flow files and snapshots."""
        return {
            "max_attempts": self.max_attempts,
            "base_ms": self.base_ms,
            "factor": self.factor,
            "jitter_ms": self.jitter_ms,
        }


@dataclass(frozen=True)
class Flow:
    """A validated flow.

    Invariants (established by ``parse_flow``): step ids are unique; ``entry`` and every edge end
    name a step; the edge graph has no cycle; a task has at most one outgoing edge; a finish step
    has none; a switch has at least one, each labelled by ``when`` (unique) or the single default;
    task and switch steps have a hook. ``source_path`` is where the flow came from (for messages).
    """

    id: str
    version: Any
    entry: str
    steps: tuple[Step, ...]
    edges: tuple[Edge, ...]
    retry: RetryPolicy
    timeout_s: float | None
    source_path: str

    def step(self, step_id: str) -> Step:
        """The step named ``step_id``; ``KeyError`` if there is none."""
        for step in self.steps:
            if step.id == step_id:
                return step
        raise KeyError(step_id)

    def outgoing(self, step_id: str) -> tuple[Edge, ...]:
        """The edges leaving ``step_id``, in file order."""
        return tuple(edge for edge in self.edges if edge.source == step_id)

    def to_dict(self) -> dict[str, Any]:
        """The normalized, JSON-serializable mapping (what goes under the ``flow`` key)."""
        return {
            "id": self.id,
            "version": self.version,
            "entry": self.entry,
            "steps": [step.to_dict() for step in self.steps],
            "edges": [edge.to_dict() for edge in self.edges],
            "retry": self.retry.to_dict(),
            "timeout_s": self.timeout_s,
        }
