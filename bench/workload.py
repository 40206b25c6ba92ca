"""The work both sides do: a no-op flow (one ``tracemind.steps.echo`` step) and its inputs."""

from __future__ import annotations

import json
from pathlib import Path

NOOP_FLOW_YAML = """\
flow:
  id: bench-noop
  version: "1"
  entry: echo
  steps:
    - id: echo
      kind: task
      hooks:
        run: tracemind.steps.echo
    - id: finish
      kind: finish
  edges:
    - from: echo
      to: finish
"""


def write_noop_flow(directory: Path) -> Path:
    """The no-op flow as YAML (the format ``tm init`` scaffolds) in ``directory``."""
    path = directory / "noop.yaml"
    path.write_text(NOOP_FLOW_YAML)
    return path


def write_sleep_flow(directory: Path) -> Path:
    """A flow whose step sleeps ``state["seconds"]`` (``tracemind.steps.sleep``): a busy worker
    that leaves the CPU free."""
    path = directory / "sleep.yaml"
    path.write_text(
        NOOP_FLOW_YAML.replace("bench-noop", "bench-sleep")
        .replace("id: echo", "id: nap")
        .replace("entry: echo", "entry: nap")
        .replace("from: echo", "from: nap")
        .replace("tracemind.steps.echo", "tracemind.steps.sleep")
    )
    return path


def write_noop_flow_json(directory: Path) -> Path:
    """The same flow as JSON (no YAML parser on the path)."""
    import yaml

    path = directory / "noop.json"
    path.write_text(json.dumps(yaml.safe_load(NOOP_FLOW_YAML)))
    return path


def write_inputs(directory: Path, count: int, **fields: float) -> Path:
    """``count`` task inputs, one JSON object per line (for ``tm enqueue --inputs``)."""
    path = directory / f"inputs-{count}.jsonl"
    path.write_text("".join(json.dumps({"i": i, **fields}) + "\n" for i in range(count)))
    return path
