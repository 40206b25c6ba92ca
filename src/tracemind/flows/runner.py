"""Run a validated flow synchronously, in this process: no queue, no retries, no timeouts."""

from __future__ import annotations

import traceback
from collections.abc import Callable, Mapping
from typing import Any

from tracemind.errors import Cancelled, FlowError, StepFailed
from tracemind.flows.hooks import Hook, import_hook
from tracemind.flows.model import Edge, Flow, Step, StepKind
from tracemind.flows.snapshot import FlowSnapshot
from tracemind.flows.validation import one_line


def step_context(
    *,
    task_id: str | None,
    flow_id: str | None,
    attempt: int,
    trigger: dict[str, Any] | None,
    cancel_requested: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """The ``ctx`` every hook gets, built here for ``tm run`` and for workers alike (see
    docs/flows.md): ``task_id`` (None under ``tm run``), ``flow_id``, ``attempt``, ``_trigger``
    (what a trigger recorded, or None) and ``cancel_requested()`` (always False under
    ``tm run``); the runner adds ``step_id``."""
    return {
        "task_id": task_id,
        "flow_id": flow_id,
        "attempt": attempt,
        "_trigger": trigger,
        "cancel_requested": cancel_requested or _never,
    }


def _never() -> bool:
    return False


def run_flow(
    flow: Flow | FlowSnapshot,
    state: Mapping[str, Any],
    ctx: dict[str, Any],
    *,
    stop_requested: Callable[[], bool] | None = None,
    on_step: Callable[[str], None] | None = None,
    hooks: dict[str, Hook] | None = None,
) -> dict[str, Any]:
    """Run ``flow`` from its entry and return the final state (a new dict).

    Contract:
    - ``state`` is not mutated. Each hook gets ``(ctx, copy_of_state)``; a mapping returned by a
      task or finish hook is merged into the state, any other return leaves it unchanged.
    - ``ctx`` is the caller's dict (task_id, flow_id, attempt, ...); before each hook call the
      runner sets ``ctx["step_id"]`` to the current step, so after a failure it names that step.
    - A task follows its single outgoing edge; a step without one ends the run, as does a finish.
      A switch hook returns a ``str`` label and the edge whose ``when`` equals it is followed,
      else the default edge (a non-``str`` label matches no ``when``).
    - A hook that raises (``Exception``, not ``KeyboardInterrupt``/``SystemExit``) raises
      :class:`StepFailed` carrying the step id, the exception and its formatted traceback; so
      does a switch label that matches no edge when there is no default.
    - A hook that cannot be imported raises :class:`FlowError` (retrying will not help).
    - ``hooks`` (when given) maps hook specs to the callables imported for them: a spec found
      there is not imported again, and each one imported is added. A process that runs many
      tasks passes the same dict to every run, so that each hook is imported once; without it
      every run imports its hooks afresh.
    - ``stop_requested`` (when given) is asked before every step after the first; True raises
      :class:`Cancelled` (the steps run so far keep their effects).
    - ``on_step`` (when given) is called with each step's id as that step begins.
    - More step executions than the flow has steps (only possible for a hand-built, cyclic
      :class:`Flow`) raises :class:`FlowError` rather than looping forever.
    """
    if isinstance(flow, FlowSnapshot):
        flow = flow.to_flow()
    current: dict[str, Any] = dict(state)
    if hooks is None:
        hooks = {}
    step: Step | None = flow.step(flow.entry)
    executed = 0
    while step is not None:
        if executed and stop_requested is not None and stop_requested():
            raise Cancelled(f"cancelled before step {step.id!r}")
        executed += 1
        if executed > len(flow.steps):
            raise FlowError(
                flow.source_path, f"run exceeded {len(flow.steps)} steps (cycle?)", step.id
            )
        if on_step is not None:
            on_step(step.id)
        step = _execute(flow, step, current, ctx, hooks)
    return current


def _execute(
    flow: Flow, step: Step, state: dict[str, Any], ctx: dict[str, Any], hooks: dict[str, Hook]
) -> Step | None:
    """Run one step, updating ``state`` in place; return the next step (None ends the run)."""
    result = None if step.hook is None else _call_hook(flow, step.id, step.hook, state, ctx, hooks)
    if step.kind is StepKind.SWITCH:
        return flow.step(_choose_branch(flow, step, result).target)
    if isinstance(result, Mapping):
        state.update(result)
    if step.kind is StepKind.FINISH:
        return None
    outgoing = flow.outgoing(step.id)
    return flow.step(outgoing[0].target) if outgoing else None


def _call_hook(
    flow: Flow,
    step_id: str,
    spec: str,
    state: dict[str, Any],
    ctx: dict[str, Any],
    hooks: dict[str, Hook],
) -> Any:
    fn = hooks.get(spec)
    if fn is None:
        try:
            fn = import_hook(spec)
        except (ImportError, TypeError, ValueError) as exc:
            raise FlowError(flow.source_path, one_line(str(exc)), step_id) from exc
        hooks[spec] = fn
    ctx["step_id"] = step_id
    try:
        return fn(ctx, dict(state))
    except Exception as exc:
        raise StepFailed(step_id, exc, traceback.format_exc()) from exc


def _choose_branch(flow: Flow, step: Step, label: Any) -> Edge:
    outgoing = flow.outgoing(step.id)
    if isinstance(label, str):
        for edge in outgoing:
            if edge.when == label:
                return edge
    for edge in outgoing:
        if edge.is_default:
            return edge
    known = [edge.when for edge in outgoing if edge.when is not None]
    error = LookupError(
        f"switch returned {label!r}, which matches no edge {known} and there is no default"
    )
    raise StepFailed(step.id, error, "".join(traceback.format_exception_only(error)))
