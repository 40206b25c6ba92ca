"""A project scaffolded by `tm init --template minimal` runs unchanged from its root."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tracemind.flows import load_flow, run_flow

REPO_ROOT = Path(__file__).resolve().parents[2]

# Verbatim layout of the template's flows/hello.yaml (JSON text in a .yaml file).
TEMPLATE_FLOW = """{
  "flow": {
    "id": "hello",
    "version": "1.0.0",
    "entry": "greet",
    "steps": [
      {
        "id": "greet",
        "kind": "task",
        "hooks": {
          "run": "steps.impl.hello_greet"
        }
      },
      {
        "id": "finish",
        "kind": "finish"
      }
    ],
    "edges": [
      {"from": "greet", "to": "finish"}
    ]
  }
}
"""

TEMPLATE_IMPL = """
def hello_greet(ctx, state):
    name = state.get("name") or "world"
    return {"message": f"Hello, {name}!", "name": name}
"""


@pytest.mark.parametrize("regular_package", [False, True], ids=["namespace", "regular"])
def test_minimal_template_runs_from_project_root_without_pythonpath(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    isolated_imports: None,
    regular_package: bool,
) -> None:
    # Given a tm-init project (flows/, steps/) and a sys.path that does not reach it
    (tmp_path / "flows").mkdir()
    (tmp_path / "flows" / "hello.yaml").write_text(TEMPLATE_FLOW)
    (tmp_path / "steps").mkdir()
    (tmp_path / "steps" / "impl.py").write_text(TEMPLATE_IMPL)
    if regular_package:
        (tmp_path / "steps" / "__init__.py").write_text("")
    monkeypatch.delitem(sys.modules, "steps", raising=False)
    monkeypatch.delitem(sys.modules, "steps.impl", raising=False)
    monkeypatch.delenv("PYTHONPATH", raising=False)
    monkeypatch.chdir(tmp_path)
    assert os.getcwd() not in sys.path

    # When the flow is loaded (hooks checked) and run from the project root
    snapshot = load_flow("flows/hello.yaml")
    result = run_flow(snapshot, {"name": "TraceMind"}, {"task_id": "t1"})

    # Then the hook came from ./steps/impl.py, found through the cwd put first on sys.path
    assert sys.path[0] == os.getcwd()
    assert sys.modules["steps.impl"].__file__ == str(tmp_path / "steps" / "impl.py")
    assert result == {"name": "TraceMind", "message": "Hello, TraceMind!"}
    assert snapshot.source_path == str(tmp_path / "flows" / "hello.yaml")


def test_shipped_example_flow_greets() -> None:
    snapshot = load_flow(REPO_ROOT / "examples" / "flows" / "hello.yaml")

    result = run_flow(snapshot, {"name": "example"}, {})

    assert snapshot.flow["id"] == "hello"
    assert [step["kind"] for step in snapshot.flow["steps"]] == ["task", "finish"]
    assert result == {"name": "example", "greeting": "Hello, example!"}
