"""Structural checks on a flow's edges: per-kind edge rules and cycle detection."""

from __future__ import annotations

from collections.abc import Sequence

from tracemind.errors import FlowError
from tracemind.flows.model import Edge, Step, StepKind


def check_edges(steps: Sequence[Step], edges: Sequence[Edge], path: str) -> None:
    """Check the outgoing edges of every step against its kind; FlowError naming the step.

    A task has at most one unlabelled outgoing edge, a finish step none, and a switch at least
    one, each labelled with a unique ``when`` or being the single default.
    """
    for step in steps:
        outgoing = [edge for edge in edges if edge.source == step.id]
        if step.kind is StepKind.SWITCH:
            _check_switch_edges(step, outgoing, path)
            continue
        if step.kind is StepKind.FINISH and outgoing:
            raise FlowError(path, "a finish step cannot have outgoing edges", step.id)
        if len(outgoing) > 1:
            targets = ", ".join(repr(edge.target) for edge in outgoing)
            raise FlowError(
                path,
                f"a task step has {len(outgoing)} outgoing edges ({targets}); "
                "branch with a switch step",
                step.id,
            )
        for edge in outgoing:
            if edge.when is not None or edge.is_default:
                raise FlowError(
                    path, "'when'/'default' only apply to edges leaving a switch step", step.id
                )


def _check_switch_edges(step: Step, outgoing: Sequence[Edge], path: str) -> None:
    if not outgoing:
        raise FlowError(path, "a switch step needs outgoing edges labelled with 'when'", step.id)
    labels: set[str] = set()
    defaults = 0
    for edge in outgoing:
        if edge.is_default:
            defaults += 1
        elif edge.when is None:
            raise FlowError(
                path, f"edge to {edge.target!r} needs a 'when' label (or 'default: true')", step.id
            )
        elif edge.when in labels:
            raise FlowError(path, f"two edges answer the label {edge.when!r}", step.id)
        else:
            labels.add(edge.when)
    if defaults > 1:
        raise FlowError(path, f"{defaults} default edges; keep at most one", step.id)


def check_no_cycle(step_ids: Sequence[str], edges: Sequence[Edge], path: str) -> None:
    """Reject any cycle in the edge graph (reachable from the entry or not).

    The error names the first step of the cycle found and spells the cycle out.
    """
    successors: dict[str, list[str]] = {step_id: [] for step_id in step_ids}
    for edge in edges:
        successors[edge.source].append(edge.target)
    done: set[str] = set()
    for root in step_ids:
        if root in done:
            continue
        # Iterative depth-first search; `trail` is the current path, `on_trail` its members.
        trail: list[str] = [root]
        on_trail: set[str] = {root}
        pending: list[list[str]] = [list(reversed(successors[root]))]
        while trail:
            if not pending[-1]:
                finished = trail.pop()
                on_trail.discard(finished)
                done.add(finished)
                pending.pop()
                continue
            nxt = pending[-1].pop()
            if nxt in on_trail:
                cycle = [*trail[trail.index(nxt) :], nxt]
                raise FlowError(path, "edges form a cycle: " + " -> ".join(cycle), nxt)
            if nxt not in done:
                trail.append(nxt)
                on_trail.add(nxt)
                pending.append(list(reversed(successors[nxt])))
