"""``tm enqueue`` on a Redis location is a thin client too: it speaks to the server through
:mod:`tracemind.backend.redis.wire` and imports neither redis-py nor the file backend's stores
(see tests/cli/test_thin_client.py for the file path)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tm_testing import Tm
from tracemind.backend import open_backend
from tracemind.backend.registration import registration

HELLO = Path(__file__).resolve().parents[2] / "examples" / "flows" / "hello.yaml"
NOT_ON_THE_REDIS_PATH = (
    "redis",  # redis-py: about ten times a bare interpreter's start
    "asyncio",  # (what redis-py brings)
    "tracemind.submit",  # the file backend's submitter, with its idempotency store
    "tracemind.backend.file",
    "filelock",
    "urllib",  # a plain redis://host:port/db?prefix=p is read by hand
    "ipaddress",
    "socket",  # the wire connects through _socket
    "encodings.idna",  # an ASCII host is resolved as bytes
    "ssl",  # only for rediss://
    "hashlib",  # only with an idempotency key
    "argparse",
    "dataclasses",
    "datetime",
    "inspect",
    "pathlib",
    "structlog",
    "threading",
    "typing",
    "yaml",
)
"""Modules (and packages) a cached ``tm enqueue`` on a Redis location must not import."""
PROBE = """
import json, sys
from tracemind.cli.main import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "loaded": sorted(sys.modules)}))
"""


def _run(tm: Tm, location: str, *args: str) -> tuple[set[str], str]:
    """The modules ``tm ARGS`` loaded (fresh interpreter, which also imports json) and its
    stderr."""
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**tm.env, "TM_QUEUE_URL": location, "TM_ENABLE_DAEMON": "1"},
        cwd=tm.cwd,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["code"] == 0
    return set(report["loaded"]), proc.stderr


def _slow(loaded: set[str]) -> list[str]:
    return sorted(
        name
        for name in loaded
        if any(name == slow or name.startswith(slow + ".") for slow in NOT_ON_THE_REDIS_PATH)
    )


@pytest.mark.parametrize(
    "args",
    [
        ["enqueue", str(HELLO), "-i", '{"name": "Ada"}'],
        ["enqueue", str(HELLO), "--json"],
        ["run", str(HELLO), "--detached", "-i", "{}"],
    ],
    ids=["enqueue", "enqueue --json", "run --detached"],
)
def test_enqueue_on_redis_imports_only_the_wire(
    tm: Tm, redis_location: str, args: list[str]
) -> None:
    # Given a flow already in the snapshot cache
    _run(tm, redis_location, *args)

    # When it is enqueued again
    loaded, _ = _run(tm, redis_location, *args)

    # Then the task went to Redis through the wire, and nothing slow was imported
    assert "tracemind.backend.redis.wire" in loaded
    assert _slow(loaded) == []
    backend = open_backend(redis_location, durable=True)
    try:
        assert backend.counts()[0].pending == 2
    finally:
        backend.close()


def test_the_notice_reads_the_registry_through_the_wire(tm: Tm, redis_location: str) -> None:
    args = ("enqueue", str(HELLO), "-i", "{}")
    _, stderr = _run(tm, redis_location, *args)
    assert "no daemon or worker pool serves the queue" in stderr

    # Given a live registration on the queue
    backend = open_backend(redis_location, durable=True)
    try:
        entry = registration(
            "probe-daemon",
            kind="daemon",
            state_dir=None,
            started_s=time.time(),
            workers={"live": 1},
            draining=False,
        )
        backend.registry.register(entry)

        # When a task is enqueued
        loaded, stderr = _run(tm, redis_location, *args)
    finally:
        backend.registry.deregister("probe-daemon")
        backend.close()

    # Then the registration was seen (no notice), without redis-py
    assert "no daemon or worker pool serves the queue" not in stderr, stderr
    assert _slow(loaded) == []
