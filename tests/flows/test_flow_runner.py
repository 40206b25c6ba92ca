"""Running flows: state merging, switch branching, ctx, failures and the runaway guard."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tracemind.errors import FlowError, StepFailed
from tracemind.flows import (
    Edge,
    Flow,
    RetryPolicy,
    Step,
    StepKind,
    load_flow,
    parse_flow,
    run_flow,
)

LinearDoc = Callable[..., dict[str, Any]]


def switch_doc(*, with_default: bool) -> dict[str, Any]:
    """route (switch on state["route"]) -> left | right [| fallback by default] -> end."""
    steps: list[dict[str, Any]] = [
        {"id": "route", "kind": "switch", "hooks": {"run": "flowhooks.route"}},
        {"id": "left", "kind": "task", "run": "flowhooks:add_one"},
        {"id": "right", "kind": "task", "run": "flowhooks:times_ten"},
        {"id": "end", "kind": "finish"},
    ]
    edges: list[dict[str, Any]] = [
        {"from": "route", "to": "left", "when": "left"},
        {"from": "route", "to": "right", "when": "right"},
        {"from": "left", "to": "end"},
        {"from": "right", "to": "end"},
    ]
    if with_default:
        steps.append({"id": "fallback", "kind": "finish", "run": "flowhooks.record_ctx"})
        edges.append({"from": "route", "to": "fallback", "when": "default"})
    return {"flow": {"id": "branchy", "steps": steps, "edges": edges}}


def test_returned_dicts_merge_into_state_in_order(hooks_dir: Path, linear_doc: LinearDoc) -> None:
    flow = parse_flow(linear_doc("flowhooks.add_one", "flowhooks.times_ten"), "f.yaml")

    result = run_flow(flow, {"n": 1, "keep": "me"}, {})

    assert result == {"n": 20, "keep": "me"}


def test_caller_state_is_not_mutated(hooks_dir: Path, linear_doc: LinearDoc) -> None:
    state = {"n": 1}
    flow = parse_flow(linear_doc("flowhooks.add_one", "flowhooks.mutate_in_place"), "f.yaml")

    result = run_flow(flow, state, {})

    assert state == {"n": 1}
    assert result is not state
    # In-place edits by a hook are made on a copy; only returned mappings change the state.
    assert result == {"n": 2}


def test_non_mapping_return_leaves_state_unchanged(hooks_dir: Path, linear_doc: LinearDoc) -> None:
    flow = parse_flow(linear_doc("flowhooks.returns_list"), "f.yaml")

    assert run_flow(flow, {"a": 1}, {}) == {"a": 1}


def test_run_shorthand_with_colon_and_dotted_attribute(
    hooks_dir: Path, linear_doc: LinearDoc
) -> None:
    doc = linear_doc("flowhooks:add_one", "flowhooks:Hooks.mark")

    result = run_flow(parse_flow(doc, "f.yaml"), {}, {})

    assert result == {"n": 1, "marked": True}


def test_run_shorthand_directly_on_step(hooks_dir: Path) -> None:
    doc = {
        "flow": {"id": "one", "steps": [{"id": "only", "kind": "task", "run": "flowhooks:add_one"}]}
    }

    assert run_flow(parse_flow(doc, "f.yaml"), {"n": 41}, {}) == {"n": 42}


@pytest.mark.parametrize(("label", "expected_n"), [("left", 4), ("right", 30)])
def test_switch_follows_the_edge_matching_the_label(
    hooks_dir: Path, label: str, expected_n: int
) -> None:
    flow = parse_flow(switch_doc(with_default=True), "f.yaml")

    result = run_flow(flow, {"route": label, "n": 3}, {})

    assert result == {"route": label, "n": expected_n}


def test_switch_takes_default_edge_when_no_label_matches(hooks_dir: Path) -> None:
    flow = parse_flow(switch_doc(with_default=True), "f.yaml")
    ctx: dict[str, Any] = {"task_id": "t-9"}

    result = run_flow(flow, {"route": "up", "n": 3}, ctx)

    # The default target is a finish step with a hook: it ran, left/right did not.
    assert result == {"route": "up", "n": 3, "seen_step": "fallback", "seen_task": "t-9"}


def test_switch_without_match_or_default_fails_naming_step_and_label(hooks_dir: Path) -> None:
    flow = parse_flow(switch_doc(with_default=False), "f.yaml")

    with pytest.raises(StepFailed) as info:
        run_flow(flow, {"route": "up", "n": 3}, {})

    assert info.value.step == "route"
    assert isinstance(info.value.error, LookupError)
    assert "'up'" in str(info.value)
    assert str(info.value).startswith("step 'route' failed: LookupError: switch returned 'up'")
    assert "LookupError" in info.value.traceback_text


def test_runner_sets_ctx_step_id_before_each_hook(hooks_dir: Path, linear_doc: LinearDoc) -> None:
    ctx: dict[str, Any] = {"task_id": "t-1", "attempt": 2}
    flow = parse_flow(linear_doc("flowhooks.add_one", "flowhooks.record_ctx"), "f.yaml")

    result = run_flow(flow, {}, ctx)

    assert result["seen_step"] == "s1"
    assert result["seen_task"] == "t-1"
    assert ctx == {"task_id": "t-1", "attempt": 2, "step_id": "s1"}


def test_hook_exception_becomes_step_failed_with_traceback(
    hooks_dir: Path, linear_doc: LinearDoc
) -> None:
    flow = parse_flow(linear_doc("flowhooks.add_one", "flowhooks.boom"), "f.yaml")
    ctx: dict[str, Any] = {}

    with pytest.raises(StepFailed) as info:
        run_flow(flow, {}, ctx)

    failure = info.value
    assert failure.step == "s1"
    assert isinstance(failure.error, ValueError)
    assert str(failure) == "step 's1' failed: ValueError: kaboom"
    assert 'flowhooks.py", line' in failure.traceback_text
    assert failure.traceback_text.rstrip().endswith("ValueError: kaboom")
    assert ctx["step_id"] == "s1"


def test_builtin_fail_step_message_reaches_step_failed(linear_doc: LinearDoc) -> None:
    flow = parse_flow(linear_doc("tracemind.steps.fail"), "f.yaml")

    with pytest.raises(StepFailed, match="RuntimeError: disk on fire") as info:
        run_flow(flow, {"message": "disk on fire"}, {})

    assert info.value.step == "s0"


def test_step_without_outgoing_edge_ends_the_run(hooks_dir: Path) -> None:
    doc = {
        "flow": {
            "id": "open-end",
            "steps": [
                {"id": "first", "kind": "task", "run": "flowhooks.add_one"},
                {"id": "never", "kind": "task", "run": "flowhooks.times_ten"},
            ],
            "edges": [],
        }
    }

    assert run_flow(parse_flow(doc, "f.yaml"), {"n": 1}, {}) == {"n": 2}


def test_finish_step_ends_run_after_its_hook(hooks_dir: Path) -> None:
    doc = {
        "flow": {
            "id": "fin",
            "entry": "done",
            "steps": [
                {"id": "skipped", "kind": "task", "run": "flowhooks.times_ten"},
                {"id": "done", "kind": "finish", "run": "flowhooks.add_one"},
            ],
        }
    }

    assert run_flow(parse_flow(doc, "f.yaml"), {"n": 1}, {}) == {"n": 2}


def test_missing_hook_at_run_time_is_a_flow_error(write_flow: Callable[..., Path]) -> None:
    # Given a flow loaded without checking hooks (as a worker elsewhere might receive it)
    doc = {"flow": {"id": "x", "steps": [{"id": "gone", "kind": "task", "run": "nope_mod_q.f"}]}}
    snapshot = load_flow(write_flow(doc), check_hooks=False)

    # When it runs, Then the import failure names the step and is not a StepFailed
    with pytest.raises(FlowError) as info:
        run_flow(snapshot, {}, {})

    assert info.value.step == "gone"
    assert "cannot import 'nope_mod_q'" in str(info.value)


def test_a_shared_hooks_dict_imports_each_hook_once(hooks_dir: Path) -> None:
    # Given a flow loaded without checking hooks, and a hooks dict shared between its runs
    doc = {
        "flow": {"id": "x", "steps": [{"id": "only", "kind": "task", "run": "flowhooks.add_one"}]}
    }
    flow = parse_flow(doc, "f.yaml")
    hooks: dict[str, Any] = {}

    # When it runs once, Then the hook it imported is kept under its spec
    assert run_flow(flow, {"n": 1}, {}, hooks=hooks) == {"n": 2}
    assert list(hooks) == ["flowhooks.add_one"]

    # And a later run calls what the dict holds instead of importing the spec again
    hooks["flowhooks.add_one"] = lambda ctx, state: {"n": -1}
    assert run_flow(flow, {"n": 1}, {}, hooks=hooks) == {"n": -1}
    assert run_flow(flow, {"n": 1}, {}) == {"n": 2}  # without the dict: imported afresh


def test_runaway_guard_stops_a_hand_built_cyclic_flow() -> None:
    # parse_flow rejects cycles; a Flow built by hand bypasses that, and must still terminate.
    flow = Flow(
        id="loop",
        version=None,
        entry="a",
        steps=(
            Step("a", StepKind.TASK, "tracemind.steps.echo"),
            Step("b", StepKind.TASK, "tracemind.steps.echo"),
        ),
        edges=(Edge("a", "b"), Edge("b", "a")),
        retry=RetryPolicy(),
        timeout_s=None,
        source_path="loop.yaml",
    )

    with pytest.raises(FlowError, match=r"run exceeded 2 steps") as info:
        run_flow(flow, {}, {})

    assert info.value.step == "a"
