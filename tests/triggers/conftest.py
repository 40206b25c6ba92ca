"""Fixtures for the trigger tests: a project dir with a flow, a config writer, a fake submitter."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from trigger_fakes import FakeSubmitter

from tracemind.triggers import TriggersConfig, load_config

FLOW_TEXT = """\
flow:
  id: hello
  entry: greet
  steps:
    - {id: greet, kind: task, hooks: {run: tracemind.steps.greet}}
    - {id: finish, kind: finish}
  edges:
    - {from: greet, to: finish}
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A folder with flows/hello.yaml and an empty incoming/ folder."""
    (tmp_path / "flows").mkdir()
    (tmp_path / "flows" / "hello.yaml").write_text(FLOW_TEXT)
    (tmp_path / "incoming").mkdir()
    return tmp_path


WriteConfig = Callable[..., Path]


@pytest.fixture
def write_config(project: Path) -> WriteConfig:
    """Write ``triggers.yaml`` with the given trigger mappings; returns its path."""

    def write(*triggers: dict[str, Any], name: str = "triggers.yaml") -> Path:
        path = project / name
        path.write_text(yaml.safe_dump({"version": 1, "triggers": list(triggers)}))
        return path

    return write


@pytest.fixture
def load(write_config: WriteConfig) -> Callable[..., TriggersConfig]:
    """Write and load a config in one step (environment given explicitly)."""

    def load_triggers(*triggers: dict[str, Any], environ: dict[str, str] | None = None) -> Any:
        return load_config(write_config(*triggers), environ=environ or {})

    return load_triggers


@pytest.fixture
def submitter() -> FakeSubmitter:
    return FakeSubmitter()
