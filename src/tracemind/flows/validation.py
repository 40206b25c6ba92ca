"""Turn a parsed flow document into a validated :class:`Flow`, or raise a one-line FlowError."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from tracemind.errors import FlowError
from tracemind.flows.graph import check_edges, check_no_cycle
from tracemind.flows.hooks import import_hook, split_hook_spec
from tracemind.flows.model import Edge, Flow, RetryPolicy, Step, StepKind

_KIND_BY_NAME = {kind.value: kind for kind in StepKind}
_KINDS = ", ".join(_KIND_BY_NAME)
_RETRY_KEYS = ("max_attempts", "base_ms", "factor", "jitter_ms")
_JSON_SCALARS = (str, int, float, bool)


def one_line(text: str) -> str:
    """Collapse whitespace (newlines included) so a message prints as a single line."""
    return " ".join(text.split())


def parse_flow(doc: Any, path: str, *, check_hooks: bool = True) -> Flow:
    """Validate a parsed document ``{"flow": {...}}`` and build the :class:`Flow`.

    ``path`` is only used in error messages and kept as ``Flow.source_path``. With
    ``check_hooks`` every hook is imported (so a typo fails here, before anything is enqueued).
    Unknown keys on the flow and on steps are ignored. Raises :class:`FlowError` naming ``path``
    and, when one is to blame, the step; nothing is executed apart from importing hook modules.
    """
    if not isinstance(doc, Mapping):
        raise FlowError(path, f"expected a mapping with a 'flow' key, got {_type_name(doc)}")
    raw = doc.get("flow")
    if not isinstance(raw, Mapping):
        raise FlowError(path, "missing 'flow' mapping at the top level")
    flow_id = raw.get("id")
    if not isinstance(flow_id, str) or not flow_id:
        raise FlowError(path, "flow.id must be a non-empty string")
    steps = _parse_steps(raw.get("steps"), path)
    step_ids = [step.id for step in steps]
    entry = raw.get("entry", step_ids[0])
    if not isinstance(entry, str) or entry not in step_ids:
        raise FlowError(path, f"flow.entry {entry!r} names no step")
    raw_edges = raw.get("edges")
    edges = _parse_edges([] if raw_edges is None else raw_edges, set(step_ids), path)
    check_edges(steps, edges, path)
    check_no_cycle(step_ids, edges, path)
    flow = Flow(
        id=flow_id,
        version=_parse_version(raw.get("version")),
        entry=entry,
        steps=steps,
        edges=edges,
        retry=_parse_retry(raw.get("retry"), path),
        timeout_s=_parse_timeout(raw.get("timeout_s"), path),
        source_path=path,
    )
    if check_hooks:
        check_hooks_import(flow)
    return flow


def check_hooks_import(flow: Flow) -> None:
    """Import every hook of ``flow``; FlowError naming the step if one fails or is not callable."""
    for step in flow.steps:
        if step.hook is None:
            continue
        try:
            import_hook(step.hook)
        except (ImportError, TypeError, ValueError) as exc:
            raise FlowError(flow.source_path, one_line(str(exc)), step.id) from exc


def _type_name(value: object) -> str:
    return "nothing" if value is None else type(value).__name__


def _parse_steps(raw: Any, path: str) -> tuple[Step, ...]:
    if not isinstance(raw, list) or not raw:
        raise FlowError(path, "flow.steps must be a non-empty list")
    steps: list[Step] = []
    seen: set[str] = set()
    for index, raw_step in enumerate(raw):
        step = _parse_step(raw_step, index, path)
        if step.id in seen:
            raise FlowError(path, "duplicate step id", step.id)
        seen.add(step.id)
        steps.append(step)
    return tuple(steps)


def _parse_step(raw: Any, index: int, path: str) -> Step:
    if not isinstance(raw, Mapping):
        raise FlowError(path, f"flow.steps[{index}] must be a mapping, got {_type_name(raw)}")
    step_id = raw.get("id")
    if not isinstance(step_id, str) or not step_id:
        raise FlowError(path, f"flow.steps[{index}].id must be a non-empty string")
    kind_name = raw.get("kind")
    if kind_name == "parallel":
        raise FlowError(
            path,
            "kind 'parallel' is not supported; split the branches into sequential steps",
            step_id,
        )
    if kind_name is None:
        raise FlowError(path, f"missing 'kind' (one of {_KINDS})", step_id)
    kind = _KIND_BY_NAME.get(kind_name) if isinstance(kind_name, str) else None
    if kind is None:
        raise FlowError(path, f"unknown kind {kind_name!r} (expected one of {_KINDS})", step_id)
    hook = _parse_hook(raw, step_id, path)
    if hook is None and kind is not StepKind.FINISH:
        raise FlowError(path, f"a {kind.value} step needs a hook ('hooks: {{run: ...}}')", step_id)
    return Step(id=step_id, kind=kind, hook=hook)


def _parse_hook(raw: Mapping[str, Any], step_id: str, path: str) -> str | None:
    hooks = raw.get("hooks")
    if hooks is None:
        hooks = {}
    if not isinstance(hooks, Mapping):
        raise FlowError(path, f"hooks must be a mapping, got {_type_name(hooks)}", step_id)
    unsupported = sorted(str(name) for name in hooks if name != "run")
    if unsupported:
        # Silently skipping a before/after hook would run a different flow than the file says.
        raise FlowError(path, f"unsupported hook(s) {unsupported}; only 'run' is", step_id)
    nested, shorthand = hooks.get("run"), raw.get("run")
    if nested is not None and shorthand is not None and nested != shorthand:
        raise FlowError(path, "both 'run' and 'hooks.run' are set; keep one", step_id)
    spec = nested if nested is not None else shorthand
    if spec is None:
        return None
    if not isinstance(spec, str):
        raise FlowError(path, f"hook must be a string, got {_type_name(spec)}", step_id)
    try:
        split_hook_spec(spec)
    except ValueError as exc:
        raise FlowError(path, str(exc), step_id) from None
    return spec


def _parse_edges(raw: Any, step_ids: set[str], path: str) -> tuple[Edge, ...]:
    if not isinstance(raw, list):
        raise FlowError(path, f"flow.edges must be a list, got {_type_name(raw)}")
    return tuple(_parse_edge(raw_edge, index, step_ids, path) for index, raw_edge in enumerate(raw))


def _parse_edge(raw: Any, index: int, step_ids: set[str], path: str) -> Edge:
    where = f"flow.edges[{index}]"
    if not isinstance(raw, Mapping):
        raise FlowError(path, f"{where} must be a mapping, got {_type_name(raw)}")
    source, target = raw.get("from"), raw.get("to")
    if not isinstance(source, str) or not isinstance(target, str):
        raise FlowError(path, f"{where} needs 'from' and 'to' step ids (strings)")
    for end in (source, target):
        if end not in step_ids:
            raise FlowError(path, f"{where} ({source!r} -> {target!r}) names unknown step {end!r}")
    when, default = raw.get("when"), raw.get("default", False)
    if not isinstance(default, bool):
        raise FlowError(path, f"{where}: 'default' must be true or false", source)
    if when is not None and not isinstance(when, str):
        raise FlowError(
            path, f"{where}: 'when' must be a string label (quote it), got {when!r}", source
        )
    if when == "default":
        when, default = None, True
    if default and when is not None:
        raise FlowError(path, f"{where}: an edge is either 'when: {when}' or default", source)
    return Edge(source=source, target=target, when=when, is_default=default)


def _parse_version(raw: Any) -> Any:
    # Snapshots must be JSON; YAML can produce dates and the like, which keep their text form.
    if raw is None or isinstance(raw, _JSON_SCALARS):
        return raw
    return str(raw)


def _parse_retry(raw: Any, path: str) -> RetryPolicy:
    if raw is None:
        return RetryPolicy()
    if not isinstance(raw, Mapping):
        raise FlowError(path, f"flow.retry must be a mapping, got {_type_name(raw)}")
    unknown = sorted(str(key) for key in raw if key not in _RETRY_KEYS)
    if unknown:
        raise FlowError(
            path, f"flow.retry has unknown key(s) {unknown}; known: {list(_RETRY_KEYS)}"
        )
    try:
        return RetryPolicy(**{key: raw[key] for key in _RETRY_KEYS if key in raw})
    except ValueError as exc:
        raise FlowError(path, f"flow.retry.{exc}") from None


def _parse_timeout(raw: Any, path: str) -> float | None:
    if raw is None:
        return None
    if (
        isinstance(raw, bool)
        or not isinstance(raw, int | float)
        or not math.isfinite(raw)
        or raw <= 0
    ):
        raise FlowError(path, f"flow.timeout_s must be a positive number of seconds, got {raw!r}")
    return float(raw)
