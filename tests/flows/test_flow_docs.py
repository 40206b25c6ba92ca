"""docs/flows.md stays true: every validation message it lists is what the validator says, and
its worked example runs as written."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tm_testing import tm_command
from tracemind.errors import FlowError
from tracemind.flows.validation import parse_flow

DOC = Path(__file__).resolve().parents[2] / "docs" / "flows.md"
TASK = {"id": "a", "kind": "task", "run": "tracemind.steps.echo"}
END = {"id": "end", "kind": "finish"}
SWITCH = {"id": "s", "kind": "switch", "run": "tracemind.steps.echo"}


def _flow(**fields: Any) -> dict[str, Any]:
    return {"flow": {"id": "f", "steps": [TASK, END], **fields}}


INVALID: list[Any] = [
    [1],
    {"nope": 1},
    {"flow": {"steps": [TASK]}},
    _flow(steps=[]),
    _flow(steps=[TASK, "x"]),
    _flow(steps=[TASK, {"kind": "task"}]),
    _flow(steps=[TASK, TASK]),
    _flow(steps=[{"id": "a"}]),
    _flow(steps=[{"id": "a", "kind": "map"}]),
    _flow(steps=[{"id": "a", "kind": "parallel"}]),
    _flow(steps=[{"id": "a", "kind": "task"}]),
    _flow(steps=[{"id": "a", "kind": "task", "hooks": ["x"]}]),
    _flow(steps=[{"id": "a", "kind": "task", "hooks": {"run": "m.f", "before": "m.g"}}]),
    _flow(steps=[{"id": "a", "kind": "task", "run": "m.f", "hooks": {"run": "m.g"}}]),
    _flow(steps=[{"id": "a", "kind": "task", "run": 3}]),
    _flow(steps=[{"id": "a", "kind": "task", "run": "x"}]),
    _flow(entry="start"),
    _flow(edges={}),
    _flow(edges=["x"]),
    _flow(edges=[{"from": "a"}]),
    _flow(edges=[{"from": "a", "to": "b"}]),
    _flow(steps=[SWITCH, TASK, END], edges=[{"from": "s", "to": "a", "default": "yes"}]),
    _flow(steps=[SWITCH, TASK, END], edges=[{"from": "s", "to": "a", "when": True}]),
    _flow(
        steps=[SWITCH, TASK, END], edges=[{"from": "s", "to": "a", "when": "x", "default": True}]
    ),
    _flow(
        steps=[TASK, {**TASK, "id": "b"}, {**TASK, "id": "c"}],
        edges=[{"from": "a", "to": "b"}, {"from": "a", "to": "c"}],
    ),
    _flow(edges=[{"from": "end", "to": "a"}]),
    _flow(edges=[{"from": "a", "to": "end", "when": "x"}]),
    _flow(steps=[SWITCH, END]),
    _flow(steps=[SWITCH, END], edges=[{"from": "s", "to": "end"}]),
    _flow(
        steps=[SWITCH, TASK, END],
        edges=[{"from": "s", "to": "a", "when": "x"}, {"from": "s", "to": "end", "when": "x"}],
    ),
    _flow(
        steps=[SWITCH, TASK, END],
        edges=[
            {"from": "s", "to": "a", "default": True},
            {"from": "s", "to": "end", "when": "default"},
        ],
    ),
    _flow(
        steps=[TASK, {**TASK, "id": "b"}],
        edges=[{"from": "a", "to": "b"}, {"from": "b", "to": "a"}],
    ),
    _flow(retry=[]),
    _flow(retry={"tries": 3}),
    _flow(retry={"max_attempts": 1.5}),
    _flow(retry={"max_attempts": 0}),
    _flow(retry={"base_ms": "x"}),
    _flow(retry={"factor": 0.5}),
    _flow(timeout_s=0),
]


def _shape(message: str) -> str:
    """A message with its variable parts made placeholders: quoted names and lists, numbers,
    and what follows a final ``got``."""
    shape = re.sub(r"got .+$", "got X", message)
    shape = re.sub(r"\[[^\]]*\]", "L", shape)
    shape = re.sub(r"'[^']*'", "Q", shape)
    return re.sub(r"\d+(\.\d+)?", "N", shape)


def _documented() -> set[str]:
    table = DOC.read_text().split("## Validation errors", 1)[1].split("\n\n## ", 1)[0]
    return {_shape(code) for code in re.findall(r"`([^`]+)`", table)}


@pytest.mark.parametrize("doc", INVALID)
def test_each_validation_message_is_documented(doc: Any) -> None:
    with pytest.raises(FlowError) as raised:
        parse_flow(doc, "f.yaml", check_hooks=False)

    assert _shape(raised.value.message) in _documented(), raised.value.message


def test_an_undocumented_message_would_be_noticed() -> None:
    assert _shape("flow.steps must be a non-empty list") in _documented()
    assert _shape("flow.steps must be a list of dreams") not in _documented()


def test_the_worked_example_runs_as_written(tmp_path: Path) -> None:
    text = DOC.read_text().split("## Worked example", 1)[1]
    [steps] = re.findall(r"```python\n(.*?)```", text, re.S)
    [flow] = re.findall(r"```yaml\n(.*?)```", text, re.S)
    shop = tmp_path / "shop"
    (shop / "flows").mkdir(parents=True)
    (shop / "shop_steps.py").write_text(steps)
    (shop / "flows" / "order.yaml").write_text(flow)

    def run(items: list[dict[str, int]]) -> dict[str, Any]:
        proc = subprocess.run(
            [*tm_command(), "run", "flows/order.yaml", "-i", json.dumps({"items": items})],
            cwd=shop, capture_output=True, text=True, timeout=60, check=False,
            env={"PATH": "/usr/bin:/bin", "XDG_CACHE_HOME": str(tmp_path / "cache")},
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        result: dict[str, Any] = json.loads(proc.stdout)
        return result

    assert run([{"qty": 2, "unit": 30}])["status"] == "approved"
    review = run([{"qty": 50, "unit": 30}])
    assert (review["status"], review["total"], review["attempt"]) == ("needs review", 1500, 1)
