"""Every invalid flow is rejected before anything runs, with one line naming file and step."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tracemind.errors import FlowError
from tracemind.flows import StepKind, load_flow, parse_flow

ECHO = "tracemind.steps.echo"


def base_flow() -> dict[str, Any]:
    """A valid flow: start -> route (switch) -> a | b (default) -> end."""
    return {
        "flow": {
            "id": "valid",
            "steps": [
                {"id": "start", "kind": "task", "hooks": {"run": ECHO}},
                {"id": "route", "kind": "switch", "hooks": {"run": ECHO}},
                {"id": "a", "kind": "task", "run": ECHO},
                {"id": "b", "kind": "task", "run": "tracemind.steps:echo"},
                {"id": "end", "kind": "finish"},
            ],
            "edges": [
                {"from": "start", "to": "route"},
                {"from": "route", "to": "a", "when": "left"},
                {"from": "route", "to": "b", "when": "default"},
                {"from": "a", "to": "end"},
                {"from": "b", "to": "end"},
            ],
        }
    }


Mutation = Callable[[dict[str, Any]], None]
WriteFlow = Callable[..., Path]


def step(doc: dict[str, Any], step_id: str) -> dict[str, Any]:
    found: dict[str, Any] = next(s for s in doc["flow"]["steps"] if s["id"] == step_id)
    return found


def add_edge(source: str, target: str, **extra: Any) -> Mutation:
    return lambda doc: doc["flow"]["edges"].append({"from": source, "to": target, **extra})


def loop_back_to_start(doc: dict[str, Any]) -> None:
    doc["flow"]["edges"][3]["to"] = "start"  # a -> start instead of a -> end


def add_unreachable_cycle(doc: dict[str, Any]) -> None:
    doc["flow"]["steps"] += [{"id": n, "kind": "task", "run": ECHO} for n in ("x", "y")]
    doc["flow"]["edges"] += [{"from": "x", "to": "y"}, {"from": "y", "to": "x"}]


def switch_without_edges(doc: dict[str, Any]) -> None:
    step(doc, "b")["kind"] = "switch"
    doc["flow"]["edges"].pop(4)  # b -> end


CASES: list[tuple[str, Mutation, str, str | None]] = [
    ("missing id", lambda d: d["flow"].pop("id"), "flow.id must be a non-empty string", None),
    ("int id", lambda d: d["flow"].update(id=7), "flow.id must be a non-empty string", None),
    ("no steps", lambda d: d["flow"].pop("steps"), "flow.steps must be a non-empty list", None),
    ("empty steps", lambda d: d["flow"].update(steps=[]), "must be a non-empty list", None),
    ("step not mapping", lambda d: d["flow"]["steps"].append("x"), "steps[5] must be a", None),
    ("step without id", lambda d: step(d, "a").pop("id"), "steps[2].id must be", None),
    (
        "duplicate step id",
        lambda d: d["flow"]["steps"].append({"id": "a", "kind": "finish"}),
        "duplicate step id",
        "a",
    ),
    ("unknown kind", lambda d: step(d, "a").update(kind="map"), "unknown kind 'map'", "a"),
    ("missing kind", lambda d: step(d, "a").pop("kind"), "missing 'kind'", "a"),
    (
        "parallel",
        lambda d: step(d, "a").update(kind="parallel"),
        "kind 'parallel' is not supported; split the branches into sequential steps",
        "a",
    ),
    ("task without hook", lambda d: step(d, "a").pop("run"), "a task step needs a hook", "a"),
    (
        "switch without hook",
        lambda d: step(d, "route").pop("hooks"),
        "a switch step needs a hook",
        "route",
    ),
    ("hook not a string", lambda d: step(d, "a").update(run=3), "hook must be a string", "a"),
    ("hook without module", lambda d: step(d, "a").update(run="echo"), "must look like", "a"),
    (
        "unsupported hook",
        lambda d: step(d, "start")["hooks"].update(before=ECHO),
        "unsupported hook(s) ['before']",
        "start",
    ),
    (
        "run and hooks.run disagree",
        lambda d: step(d, "start").update(run="tracemind.steps.greet"),
        "both 'run' and 'hooks.run' are set",
        "start",
    ),
    (
        "hook module missing",
        lambda d: step(d, "a").update(run="no_such_pkg_xyz.mod.fn"),
        "cannot import 'no_such_pkg_xyz.mod'",
        "a",
    ),
    (
        "hook attribute missing",
        lambda d: step(d, "a").update(run="tracemind.steps.nope"),
        "'tracemind.steps' has no attribute 'nope'",
        "a",
    ),
    (
        "hook not callable",
        lambda d: step(d, "a").update(run="tracemind.steps.__all__"),
        "is not callable",
        "a",
    ),
    ("entry unknown", lambda d: d["flow"].update(entry="ghost"), "entry 'ghost' names no", None),
    ("edges not a list", lambda d: d["flow"].update(edges={}), "flow.edges must be a list", None),
    ("edge to unknown", add_edge("end", "ghost"), "names unknown step 'ghost'", None),
    ("edge from unknown", add_edge("ghost", "a"), "names unknown step 'ghost'", None),
    (
        "edge without to",
        lambda d: d["flow"]["edges"].append({"from": "a"}),
        "needs 'from' and 'to'",
        None,
    ),
    ("cycle", loop_back_to_start, "cycle: start -> route -> a -> start", "start"),
    ("unreachable cycle", add_unreachable_cycle, "edges form a cycle: x -> y -> x", "x"),
    ("self loop", add_edge("route", "route", when="again"), "route -> route", "route"),
    (
        "task with two edges",
        add_edge("start", "end"),
        "a task step has 2 outgoing edges ('route', 'end'); branch with a switch step",
        "start",
    ),
    (
        "when on a task edge",
        lambda d: d["flow"]["edges"][0].update(when="x"),
        "only apply",
        "start",
    ),
    ("finish with edge", add_edge("end", "a"), "a finish step cannot have outgoing", "end"),
    ("switch edge unlabelled", add_edge("route", "end"), "needs a 'when' label", "route"),
    ("duplicate label", add_edge("route", "end", when="left"), "label 'left'", "route"),
    ("two defaults", add_edge("route", "end", default=True), "2 default edges", "route"),
    ("non-string when", add_edge("route", "end", when=True), "'when' must be a string", "route"),
    ("when and default", add_edge("route", "end", when="x", default=True), "either", "route"),
    ("switch without edges", switch_without_edges, "switch step needs outgoing edges", "b"),
    ("retry not mapping", lambda d: d["flow"].update(retry=3), "flow.retry must be a", None),
    (
        "retry unknown key",
        lambda d: d["flow"].update(retry={"max_attempt": 2}),
        "unknown key(s) ['max_attempt']",
        None,
    ),
    (
        "timeout not positive",
        lambda d: d["flow"].update(timeout_s=0),
        "timeout_s must be a positive number",
        None,
    ),
]


@pytest.mark.parametrize(
    ("mutate", "expected", "step_id"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_invalid_flow_is_rejected_naming_file_and_step(
    write_flow: WriteFlow, mutate: Mutation, expected: str, step_id: str | None
) -> None:
    doc = base_flow()
    mutate(doc)
    path = write_flow(doc)

    with pytest.raises(FlowError) as info:
        load_flow(path)

    message = str(info.value)
    assert expected in message
    assert message.startswith(f"{path}: ")
    assert "\n" not in message
    assert info.value.step == step_id
    if step_id is not None:
        assert message.startswith(f"{path}: step {step_id!r}: ")


def test_base_flow_is_valid_and_normalized() -> None:
    # The fixture all the cases above mutate must itself be accepted.
    flow = parse_flow(copy.deepcopy(base_flow()), "base.yaml")

    assert flow.entry == "start"
    assert [s.kind for s in flow.steps][:2] == [StepKind.TASK, StepKind.SWITCH]
    assert flow.step("b").hook == "tracemind.steps:echo"
    assert [(e.when, e.is_default) for e in flow.outgoing("route")] == [
        ("left", False),
        (None, True),
    ]


def test_edge_with_default_key_is_the_switch_default() -> None:
    doc = base_flow()
    doc["flow"]["edges"][2] = {"from": "route", "to": "b", "default": True}

    flow = parse_flow(doc, "f.yaml")

    assert flow.outgoing("route")[1].is_default
    assert flow.to_dict()["edges"][2] == {"from": "route", "to": "b", "default": True}


def test_hook_import_is_skipped_without_check_hooks() -> None:
    doc = base_flow()
    step(doc, "a")["run"] = "no_such_pkg_xyz.mod.fn"

    flow = parse_flow(doc, "f.yaml", check_hooks=False)

    assert flow.step("a").hook == "no_such_pkg_xyz.mod.fn"


def test_hook_module_raising_at_import_is_a_flow_error(hooks_dir: Path) -> None:
    doc = base_flow()
    step(doc, "a")["run"] = "broken_hooks.anything"

    with pytest.raises(FlowError) as info:
        parse_flow(doc, "f.yaml")

    assert str(info.value) == (
        "f.yaml: step 'a': hook 'broken_hooks.anything': importing 'broken_hooks' raised "
        "RuntimeError: broken at import"
    )


def test_explicit_entry_is_used() -> None:
    doc = base_flow()
    doc["flow"]["entry"] = "route"
    doc["flow"]["edges"].pop(0)

    assert parse_flow(doc, "f.yaml").entry == "route"


def test_unknown_top_level_keys_are_ignored() -> None:
    doc = base_flow()
    doc["flow"]["description"] = "free text"

    assert "description" not in parse_flow(doc, "f.yaml").to_dict()


def test_empty_edges_key_means_no_edges() -> None:
    # YAML `edges:` with nothing under it parses as None.
    doc = {"flow": {"id": "solo", "steps": [{"id": "only", "kind": "finish"}], "edges": None}}

    assert parse_flow(doc, "f.yaml").edges == ()
