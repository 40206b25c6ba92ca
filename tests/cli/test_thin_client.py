"""``tm enqueue`` is a thin client: it must not import the server or logging stacks, and with
its flow in the snapshot cache nothing that slows its start-up either."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tm_testing import Tm

HELLO = Path(__file__).resolve().parents[2] / "examples" / "flows" / "hello.yaml"
HEAVY = ("flask", "gunicorn", "docker", "structlog", "filelock", "werkzeug", "prometheus_client")
SLOW_TO_IMPORT = (
    "argparse",  # the quick forms of `tm enqueue` and `tm run` skip it
    "dataclasses",  # and with it inspect, ast, dis, tokenize
    "datetime",
    "filelock",  # only with --idempotency-key
    "hashlib",  # OpenSSL
    "inspect",
    "structlog",  # only once something is logged
    "tracemind.flows.validation",  # a cached snapshot is not validated again
    "tracemind.client.api",  # the Python client: `tm enqueue` submits directly
    "tracemind.cli.daemon_imports",  # only for hooks outside tracemind
    "yaml",
    "pathlib",
    "threading",  # the ack committer's thread: workers only
    "typing",
)
"""Modules a cached ``tm enqueue`` must not import (~1-50 ms each, of a ~25 ms start)."""
PROBE = """
import json, sys
from tracemind.cli.main import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "loaded": sorted(sys.modules)}))
"""


def _loaded(tm: Tm, *args: str, env: dict[str, str] | None = None) -> set[str]:
    """The modules loaded by ``tm ARGS``, run in a fresh interpreter (which also imports json)."""
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


def _packages(modules: set[str]) -> set[str]:
    return {name.split(".")[0] for name in modules}


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
    loaded = _packages(_loaded(tm, *args, env=env))

    assert "tracemind" in loaded  # the probe really ran tm
    assert loaded.isdisjoint(HEAVY), sorted(loaded & set(HEAVY))


def test_enqueue_with_a_key_imports_no_heavy_module(tm: Tm) -> None:
    import fcntl

    loaded = _packages(_loaded(tm, "enqueue", str(HELLO), "--idempotency-key", "k"))

    assert "tracemind" in loaded
    assert loaded.isdisjoint({"flask", "gunicorn", "docker", "werkzeug"})
    # the key's lock is a byte of one lock file (F_OFD_SETLK); filelock only where that is missing
    assert ("filelock" in loaded) is not hasattr(fcntl, "F_OFD_SETLK")


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["enqueue", str(HELLO), "-i", '{"name": "Ada"}'], {}),
        (["--debug", "enqueue", str(HELLO), "--json"], {}),
        (["run", str(HELLO), "--detached", "-i", "{}"], {"TM_ENABLE_DAEMON": "1"}),
    ],
    ids=["enqueue", "--debug enqueue --json", "run --detached"],
)
def test_enqueue_of_a_cached_flow_imports_nothing_slow(
    tm: Tm, args: list[str], env: dict[str, str]
) -> None:
    first = _loaded(tm, *args, env=env)
    cached = _loaded(tm, *args, env=env)

    assert "yaml" in first  # the first run validated the flow (and cached it)
    assert "tracemind.backend.file.queue" in cached  # the second really enqueued
    assert cached.isdisjoint(SLOW_TO_IMPORT), sorted(cached & set(SLOW_TO_IMPORT))
