"""Striped locks: one byte of one file per stripe, held per open file like flock."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tracemind.backend.file import stripes
from tracemind.errors import LockTimeout

HOLD = """
import sys
from tracemind.backend.file import stripes
with stripes.held(sys.argv[1], [int(s) for s in sys.argv[2:]], 5.0):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_a_stripe_held_by_another_process_blocks_that_stripe_only(tmp_path: Path) -> None:
    # Given another process holding stripes 7 and 200
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path), "7", "200"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        # When this process asks for all the other stripes, Then it gets them at once
        started = time.monotonic()
        with stripes.held(str(tmp_path), [n for n in range(256) if n not in (7, 200)], 1.0):
            assert time.monotonic() - started < 1.0
        # and a held one times out, naming the stripe
        busy = r"stripe c8\) not acquired within 0\.2 s"
        with pytest.raises(LockTimeout, match=busy), stripes.held(str(tmp_path), [1, 200], 0.2):
            pass
    finally:
        holder.kill()
        holder.wait(timeout=10)
    # And once the holder is gone (killed: it ran no handler), its stripes are free
    with stripes.held(str(tmp_path), [7, 200], 0.5):
        pass
    assert [p.name for p in tmp_path.iterdir()] == ["stripes.lock"]


def test_two_holders_in_one_process_exclude_each_other(tmp_path: Path) -> None:
    # (locks of the open file, like flock: not of the process, like POSIX record locks)
    with (
        stripes.held(str(tmp_path), [42], 1.0),
        pytest.raises(LockTimeout),
        stripes.held(str(tmp_path), [42], 0.1),
    ):
        pass
    with stripes.held(str(tmp_path), [42], 0.1):  # released when the first let go
        pass
