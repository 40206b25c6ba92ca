"""``tm enqueue`` is a thin client: it must not import the server or logging stacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tm_testing import Tm

HELLO = Path(__file__).resolve().parents[2] / "examples" / "flows" / "hello.yaml"
HEAVY = ("flask", "gunicorn", "docker", "structlog", "filelock", "werkzeug", "prometheus_client")
PROBE = """
import json, sys
from tracemind.cli.main import main
code = main(sys.argv[1:])
loaded = sorted({name.split(".")[0] for name in sys.modules})
print(json.dumps({"code": code, "loaded": loaded}))
"""


def _loaded(tm: Tm, *args: str, env: dict[str, str] | None = None) -> set[str]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**tm.env, **(env or {})},
        cwd=tm.cwd,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["code"] == 0
    return set(report["loaded"])


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["enqueue", str(HELLO), "-i", "{}"], {}),
        (["enqueue", str(HELLO), "--json"], {}),
        (["run", str(HELLO), "--detached"], {"TM_ENABLE_DAEMON": "1"}),
    ],
    ids=["enqueue", "enqueue --json", "run --detached"],
)
def test_enqueue_imports_no_heavy_module(tm: Tm, args: list[str], env: dict[str, str]) -> None:
    loaded = _loaded(tm, *args, env=env)

    assert "tracemind" in loaded  # the probe really ran tm
    assert loaded.isdisjoint(HEAVY), sorted(loaded & set(HEAVY))


def test_enqueue_with_a_key_needs_only_filelock(tm: Tm) -> None:
    loaded = _loaded(tm, "enqueue", str(HELLO), "--idempotency-key", "k")

    assert "filelock" in loaded
    assert loaded.isdisjoint({"flask", "gunicorn", "docker", "werkzeug"})
