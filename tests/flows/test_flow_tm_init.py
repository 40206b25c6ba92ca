"""A project scaffolded by `tm init --template minimal` runs unchanged from its root."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tracemind.cli.scaffold import write_template
from tracemind.flows import load_flow, run_flow

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("regular_package", [False, True], ids=["namespace", "regular"])
def test_minimal_template_runs_from_project_root_without_pythonpath(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    isolated_imports: None,
    regular_package: bool,
) -> None:
    # Given the project `tm init` writes (flows/, steps/) and a sys.path that does not reach it
    write_template("minimal", tmp_path)
    if not regular_package:
        (tmp_path / "steps" / "__init__.py").unlink()
    monkeypatch.delitem(sys.modules, "steps", raising=False)
    monkeypatch.delitem(sys.modules, "steps.hello", raising=False)
    monkeypatch.delenv("PYTHONPATH", raising=False)
    monkeypatch.chdir(tmp_path)
    assert os.getcwd() not in sys.path

    # When the flow is loaded (hooks checked) and run from the project root
    snapshot = load_flow("flows/hello.yaml")
    result = run_flow(snapshot, {"name": "TraceMind"}, {"task_id": "t1"})

    # Then the hook came from ./steps/hello.py, found through the cwd put first on sys.path
    assert sys.path[0] == os.getcwd()
    assert sys.modules["steps.hello"].__file__ == str(tmp_path / "steps" / "hello.py")
    assert result == {"name": "TraceMind", "greeting": "Hello, TraceMind!"}
    assert snapshot.source_path == str(tmp_path / "flows" / "hello.yaml")


def test_shipped_example_flow_greets() -> None:
    snapshot = load_flow(REPO_ROOT / "examples" / "flows" / "hello.yaml")

    result = run_flow(snapshot, {"name": "example"}, {})

    assert snapshot.flow["id"] == "hello"
    assert [step["kind"] for step in snapshot.flow["steps"]] == ["task", "finish"]
    assert result == {"name": "example", "greeting": "Hello, example!"}
