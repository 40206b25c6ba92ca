"""What executes a task: the runtime protocol, the default flow runtime, and ``--runtime`` loading.

A runtime is any object with ``execute(task) -> dict`` (see :class:`Runtime`). ``--runtime
module:factory`` names a zero-argument callable that returns one; each worker process calls the
factory once at start-up. The default runs the flow snapshot the task carries.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from tracemind.errors import TraceMindError, UsageError


@dataclass(frozen=True)
class Task:
    """One delivery of a task, as a runtime sees it."""

    task_id: str
    flow_id: str | None
    attempt: int
    record: dict[str, Any]
    """The task record: ``flow`` (snapshot), ``input``, ``trigger``, ``idempotency_key``…"""
    cancel_requested: Callable[[], bool] = field(default=lambda: False)
    """Whether someone asked to cancel this task (``tm task cancel``) since it started: a
    runtime stops at the next safe point by raising :class:`~tracemind.errors.Cancelled`."""
    on_step: Callable[[str], None] = field(default=lambda step_id: None)
    """A runtime calls this with a step's id as the step begins (for the dashboard)."""


class Runtime(Protocol):
    def execute(self, task: Task) -> dict[str, Any]:
        """Run the task and return its result (a JSON-serializable dict).

        Raise :class:`NonRetryable` for a failure that another attempt cannot fix (the task goes
        straight to the DLQ); any other exception is retried per the flow's retry policy.
        """


class NonRetryable(TraceMindError):
    """A failure that retrying cannot fix (e.g. an invalid flow snapshot)."""


class FlowRuntime:
    """Runs the flow snapshot carried by the task, with ``ctx`` = task id, flow id, attempt and
    the trigger metadata (``_trigger``). A snapshot is validated once per worker and reused for
    every task that carries an identical one; a hook is imported once per worker, when a task
    first calls it. Hooks are imported from the app dirs (``TM_APP_DIR``, set by
    ``--app-dir``) first, then the current directory and ``sys.path``; a hook that cannot be
    imported dead-letters the task with where the worker looked."""

    CACHE_SIZE = 64

    def __init__(self) -> None:
        from tracemind.config import app_dirs
        from tracemind.flows.hooks import add_to_import_path

        add_to_import_path(app_dirs(check=False))  # a missing one shows in the import error
        self._validated: dict[str, tuple[Any, Any]] = {}  # sha256 -> (snapshot, Flow)
        self._hooks: dict[str, Any] = {}  # hook spec -> the callable imported for it

    def _flow(self, snapshot: Any) -> Any:
        from tracemind.errors import FlowError
        from tracemind.flows import FlowSnapshot

        key = snapshot.get("sha256") if isinstance(snapshot, dict) else None
        cached = self._validated.get(key) if isinstance(key, str) else None
        if cached is not None and cached[0] == snapshot:
            return cached[1]
        try:
            flow = FlowSnapshot.from_dict(snapshot, check_hooks=True).to_flow()
        except FlowError as exc:
            raise NonRetryable(str(exc)) from exc
        if isinstance(key, str):
            if len(self._validated) >= self.CACHE_SIZE:
                self._validated.clear()
                self._hooks.clear()
            self._validated[key] = (snapshot, flow)
        return flow

    def execute(self, task: Task) -> dict[str, Any]:
        from tracemind.flows.runner import run_flow, step_context

        flow = self._flow(task.record.get("flow"))
        ctx = step_context(
            task_id=task.task_id,
            flow_id=task.flow_id,
            attempt=task.attempt,
            trigger=task.record.get("trigger"),
            cancel_requested=task.cancel_requested,
        )
        state = task.record.get("input") or {}
        return run_flow(
            flow,
            dict(state),
            ctx,
            stop_requested=task.cancel_requested,
            on_step=task.on_step,
            hooks=self._hooks,
        )


def load_factory(spec: str) -> Any:
    """Import ``module:factory`` and return the callable; UsageError with one line otherwise."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"--runtime {spec!r}: expected module:factory")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any import-time failure of user code is a bad --runtime
        raise UsageError(f"--runtime {spec!r}: cannot import {module_name} ({exc})") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise UsageError(f"--runtime {spec!r}: {module_name} has no callable {attr!r}")
    return factory


def make_runtime(spec: str) -> Runtime:
    runtime = load_factory(spec)()
    if not callable(getattr(runtime, "execute", None)):
        raise UsageError(f"--runtime {spec!r}: the factory returned an object without execute()")
    return runtime  # type: ignore[no-any-return]
