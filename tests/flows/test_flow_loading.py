"""Reading flow files: YAML, JSON, extension choice, and every way a file can be unusable."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tracemind.errors import FlowError
from tracemind.flows import load_flow, run_flow

HELLO_JSON = """{
  "flow": {
    "id": "hello",
    "version": "1.0.0",
    "steps": [
      {"id": "greet", "kind": "task", "hooks": {"run": "tracemind.steps.greet"}},
      {"id": "finish", "kind": "finish"}
    ],
    "edges": [{"from": "greet", "to": "finish"}]
  }
}
"""

HELLO_YAML = """
flow:
  id: hello
  version: 2
  steps:
    - {id: greet, kind: task, hooks: {run: tracemind.steps.greet}}
    - {id: finish, kind: finish}
  edges:
    - {from: greet, to: finish}
"""


@pytest.mark.parametrize("name", ["hello.yaml", "hello.yml", "hello.YAML", "hello.flow"])
def test_yaml_file_loads_and_runs(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text(HELLO_YAML)

    snapshot = load_flow(path)

    assert snapshot.flow["id"] == "hello"
    assert snapshot.flow["version"] == 2
    assert run_flow(snapshot, {"name": "yaml"}, {})["greeting"] == "Hello, yaml!"


@pytest.mark.parametrize("name", ["hello.json", "hello.yaml"])
def test_json_text_loads_from_json_and_yaml_extensions(tmp_path: Path, name: str) -> None:
    # tm init's template writes JSON text into flows/hello.yaml; YAML parses it too.
    path = tmp_path / name
    path.write_text(HELLO_JSON)

    snapshot = load_flow(str(path))

    assert [step["id"] for step in snapshot.flow["steps"]] == ["greet", "finish"]
    assert snapshot.flow["version"] == "1.0.0"


def test_json_extension_uses_the_json_parser(tmp_path: Path) -> None:
    # YAML would accept this document; a .json file must be strict JSON.
    path = tmp_path / "hello.json"
    path.write_text(HELLO_YAML)

    with pytest.raises(FlowError, match=r"invalid JSON at line \d+, column \d+") as info:
        load_flow(path)

    assert str(path) in str(info.value)


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + HELLO_JSON.encode())

    assert load_flow(path).flow["id"] == "hello"


def test_yaml_syntax_error_is_one_line_naming_file_and_position(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("flow:\n  id: x\n  steps: [\n    - a\n  bad: : :\n")

    with pytest.raises(FlowError) as info:
        load_flow(path)

    message = str(info.value)
    assert message.startswith(f"{path}: invalid YAML at line ")
    assert "\n" not in message


def test_json_syntax_error_is_one_line_naming_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"flow": {"id": "x",\n "steps": [}\n')

    with pytest.raises(FlowError) as info:
        load_flow(path)

    assert str(info.value).startswith(f"{path}: invalid JSON at line 2, column")
    assert "\n" not in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"

    with pytest.raises(FlowError) as info:
        load_flow(path)

    assert str(info.value) == f"{path}: file not found"
    assert info.value.exit_code == 2


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(FlowError, match="is a directory"):
        load_flow(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files regardless of their mode")
def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "secret.yaml"
    path.write_text(HELLO_YAML)
    path.chmod(0)

    with pytest.raises(FlowError, match="permission denied"):
        load_flow(path)


def test_binary_file_is_reported_as_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"flow:\n  id: \xff\xfe\n")

    with pytest.raises(FlowError, match=r"not UTF-8 text \(bad byte at offset 12\)"):
        load_flow(path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "expected a mapping with a 'flow' key, got nothing"),
        ("- a\n- b\n", "expected a mapping with a 'flow' key, got list"),
        ("id: hello\n", "missing 'flow' mapping at the top level"),
    ],
)
def test_document_without_flow_mapping(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "odd.yaml"
    path.write_text(text)

    with pytest.raises(FlowError) as info:
        load_flow(path)

    assert str(info.value) == f"{path}: {expected}"
