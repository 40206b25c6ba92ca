"""Fixtures for the flow tests: flow files under tmp_path and importable hook modules."""

from __future__ import annotations

import itertools
import json
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

HOOKS_SOURCE = """
def route(ctx, state):
    return state["route"]

def add_one(ctx, state):
    return {"n": state.get("n", 0) + 1}

def times_ten(ctx, state):
    return {"n": state["n"] * 10}

def record_ctx(ctx, state):
    return {"seen_step": ctx["step_id"], "seen_task": ctx.get("task_id")}

def mutate_in_place(ctx, state):
    state["leaked"] = True
    return None

def returns_list(ctx, state):
    return ["not", "a", "mapping"]

def boom(ctx, state):
    raise ValueError("kaboom")

NOT_CALLABLE = 42

class Hooks:
    @staticmethod
    def mark(ctx, state):
        return {"marked": True}
"""


@pytest.fixture(autouse=True)
def restore_sys_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hook imports put the cwd on ``sys.path``; keep that from leaking into other tests."""
    monkeypatch.setattr(sys, "path", list(sys.path))


@pytest.fixture
def isolated_imports(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Restore ``sys.path`` and forget modules imported from ``tmp_path`` after the test."""
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    yield
    root = str(tmp_path)
    for name, module in list(sys.modules.items()):
        locations = [getattr(module, "__file__", None) or "", *getattr(module, "__path__", [])]
        if any(str(location).startswith(root) for location in locations):
            del sys.modules[name]


@pytest.fixture
def hooks_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_imports: None) -> Path:
    """A project root (the cwd) holding ``flowhooks.py`` and ``broken_hooks.py``."""
    (tmp_path / "flowhooks.py").write_text(textwrap.dedent(HOOKS_SOURCE))
    (tmp_path / "broken_hooks.py").write_text("raise RuntimeError('broken at import')\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


WriteFlow = Callable[..., Path]


@pytest.fixture
def write_flow(tmp_path: Path) -> WriteFlow:
    """Write a flow document to ``tmp_path/<name>`` as JSON (``.json``) or YAML (otherwise)."""

    def write(doc: Any, name: str = "flow.yaml") -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith(".json"):
            path.write_text(json.dumps(doc))
        else:
            path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    return write


LinearDoc = Callable[..., dict[str, Any]]


@pytest.fixture
def linear_doc() -> LinearDoc:
    """Build a flow running the given hooks as tasks in order, then a finish step."""

    def build(*hooks: str, flow_id: str = "linear") -> dict[str, Any]:
        steps: list[dict[str, Any]] = [
            {"id": f"s{i}", "kind": "task", "hooks": {"run": hook}} for i, hook in enumerate(hooks)
        ]
        steps.append({"id": "end", "kind": "finish"})
        ids = [step["id"] for step in steps]
        edges = [{"from": a, "to": b} for a, b in itertools.pairwise(ids)]
        return {"flow": {"id": flow_id, "steps": steps, "edges": edges}}

    return build
