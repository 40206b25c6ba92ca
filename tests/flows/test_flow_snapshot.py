"""Snapshots: what a detached task carries so a worker elsewhere can run the flow."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from tracemind.errors import FlowError
from tracemind.flows import FlowSnapshot, load_flow, run_flow

FLOW_YAML = """
flow:
  id: snap
  version: 2024-05-01
  timeout_s: 1.5
  retry: {max_attempts: 2}
  steps:
    - {id: hi, kind: task, run: "tracemind.steps:greet"}
    - {id: done, kind: finish}
  edges:
    - {from: hi, to: done}
"""


@pytest.fixture
def flow_file(tmp_path: Path) -> Path:
    path = tmp_path / "snap.yaml"
    path.write_text(FLOW_YAML)
    return path


def test_snapshot_records_absolute_path_and_sha256_of_bytes(
    flow_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(flow_file.parent)

    snapshot = load_flow("snap.yaml")

    assert snapshot.source_path == str(flow_file)
    assert os.path.isabs(snapshot.source_path)
    assert snapshot.sha256 == hashlib.sha256(flow_file.read_bytes()).hexdigest()


def test_snapshot_changes_when_the_file_changes(flow_file: Path) -> None:
    before = load_flow(flow_file).sha256
    flow_file.write_text(FLOW_YAML.replace("max_attempts: 2", "max_attempts: 3"))

    assert load_flow(flow_file).sha256 != before


def test_snapshot_is_json_and_round_trips(flow_file: Path) -> None:
    snapshot = load_flow(flow_file)

    wire = json.dumps(snapshot.to_dict())
    restored = FlowSnapshot.from_dict(json.loads(wire))

    assert restored == snapshot
    assert restored.flow["version"] == "2024-05-01"  # a YAML date keeps its text form
    assert restored.flow["retry"]["max_attempts"] == 2
    assert restored.to_flow().timeout_s == 1.5


def test_restored_snapshot_runs_without_the_source_file(flow_file: Path) -> None:
    data: dict[str, Any] = json.loads(json.dumps(load_flow(flow_file).to_dict()))
    flow_file.unlink()

    restored = FlowSnapshot.from_dict(data, check_hooks=True)

    assert run_flow(restored, {"name": "worker"}, {}) == {
        "name": "worker",
        "greeting": "Hello, worker!",
    }


def test_from_dict_imports_hooks_only_when_asked(flow_file: Path) -> None:
    data = load_flow(flow_file).to_dict()
    data["flow"]["steps"][0]["hooks"]["run"] = "absent_module_zz.fn"

    unchecked = FlowSnapshot.from_dict(data)
    with pytest.raises(FlowError, match="cannot import 'absent_module_zz'") as info:
        FlowSnapshot.from_dict(data, check_hooks=True)

    assert unchecked.flow["steps"][0]["hooks"]["run"] == "absent_module_zz.fn"
    assert str(info.value).startswith(f"{flow_file}: step 'hi': ")


def test_from_dict_revalidates_the_flow(flow_file: Path) -> None:
    data = load_flow(flow_file).to_dict()
    data["flow"]["edges"].append({"from": "done", "to": "hi"})

    with pytest.raises(FlowError) as info:
        FlowSnapshot.from_dict(data)

    assert str(info.value) == f"{flow_file}: step 'done': a finish step cannot have outgoing edges"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"sha256": "abc"}, "snapshot.sha256 must be 64 lowercase hex digits"),
        ({"sha256": "G" * 64}, "snapshot.sha256 must be 64 lowercase hex digits"),
        ({"source_path": ""}, "<snapshot>: snapshot.source_path must be a non-empty string"),
        ({"flow": None}, "missing 'flow' mapping"),
    ],
)
def test_from_dict_rejects_malformed_snapshots(
    flow_file: Path, change: dict[str, Any], expected: str
) -> None:
    data = {**load_flow(flow_file).to_dict(), **change}

    with pytest.raises(FlowError, match=expected):
        FlowSnapshot.from_dict(data)


def test_from_dict_rejects_non_mapping() -> None:
    with pytest.raises(FlowError, match=r"^<snapshot>: a flow snapshot must be a mapping$"):
        FlowSnapshot.from_dict(["not", "a", "snapshot"])
