"""A full disk under a real queue (a small tmpfs mounted for the test): every enqueue refuses
with one line and exit 1, leaves nothing half-written, and once space is back the same
submissions go through, each task once."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tm_testing import FlowFiles, Tm, read_records

pytestmark = pytest.mark.slow

VOLUME_BYTES = 2 * 1024 * 1024


@pytest.fixture
def small_volume(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs at ``tmp_path/volume``, unmounted afterwards (skips where mounting is
    not allowed)."""
    mount_point = tmp_path / "volume"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={VOLUME_BYTES}", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], timeout=30, check=False)


def _fill(volume: Path) -> Path:
    """Fill the volume with one file; the file."""
    filler = volume / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, bytes(64 * 1024))
    finally:
        os.close(fd)
    return filler


def _files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def test_a_full_disk_refuses_every_enqueue_with_one_line_and_the_retry_runs_each_task_once(
    tm: Tm, flows: FlowFiles, record_dir: Path, small_volume: Path, tmp_path: Path
) -> None:
    # Given a queue on a small volume with two tasks in it (one keyed), then the volume filled
    flow = flows.write("recorded", "tm_test_hooks.record")  # (each run: a line in record_dir)
    batch = tmp_path / "batch.jsonl"
    batch.write_text("".join(json.dumps({"n": n, "key": f"k{n}"}) + "\n" for n in range(300)))
    env = {"TM_DATA_DIR": str(small_volume / "data")}
    for key in ((), ("--idempotency-key", "before")):
        first = tm("enqueue", flow, *key, env=env)
        assert first.returncode == 0, first.stderr
    filler = _fill(small_volume)
    before = _files(small_volume / "data")
    submissions = {
        "one task": ["enqueue", flow],
        "one keyed task": ["enqueue", flow, "--idempotency-key", "single"],
        "a batch": ["enqueue", flow, "--inputs", batch],
        "a keyed batch": ["enqueue", flow, "--inputs", batch, "--idempotency-key-field", "key"],
    }
    # When each kind of submission is made on the full disk
    for what, args in submissions.items():
        refused = tm(*args, env=env)
        # Then it fails with one line naming the cause, and leaves nothing behind
        assert refused.returncode == 1, (what, refused.stdout, refused.stderr)
        assert "Traceback" not in refused.stderr
        [line] = refused.stderr.splitlines()
        assert line.startswith("tm: error: ") and "No space left on device" in line, (what, line)
        assert _files(small_volume / "data") == before, what
    stats = json.loads(tm("queue", "stats", "--json", env=env).stdout)
    assert (stats["pending"], stats["damaged"]) == (2, 0)
    # And once space is back, the same submissions go through, and each task runs once
    filler.unlink()
    for what, args in submissions.items():
        accepted = tm(*args, env=env)
        assert accepted.returncode == 0, (what, accepted.stderr)
    drained = tm("workers", "start", "--burst", env=env, timeout_s=300)
    assert drained.returncode == 0, drained.stderr
    stats = json.loads(tm("queue", "stats", "--json", env=env).stdout)
    assert (stats["pending"], stats["inflight"], stats["dead"], stats["damaged"]) == (0, 0, 0, 0)
    runs = Counter(task_id for task_id, _, _ in read_records(record_dir))
    assert len(runs) == 2 + 1 + 1 + 300 + 300 and set(runs.values()) == {1}
