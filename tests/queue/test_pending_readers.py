"""Reading ``pending/`` by names: which buckets can hold an id, and counting a bucket from one
listing — both must agree exactly with the layout and with a name-by-name count."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from special_entries import make_entry
from tracemind.backend.file import census
from tracemind.backend.file.pending import (
    INNER_MS,
    MAX_CHUNK,
    Bucket,
    PendingDir,
    bucket_of,
    may_hold_id,
)
from tracemind.queue.names import PendingName

pytestmark = pytest.mark.timeout(60)

SECOND = 1_800_000_000
"""The due second the checks centre on."""
ID_OFFSETS_MS = (-5_000, -1, 0, 1, 7, 998, 999, 1_000, 1_001, 4_321, 10_000)
ID_OFFSETS_MS += (MAX_CHUNK - 1, MAX_CHUNK, MAX_CHUNK + 1, MAX_CHUNK + 1_000, MAX_CHUNK + 5_000)


def test_the_name_filter_admits_exactly_the_buckets_bucket_of_uses() -> None:
    # Given every due time of three seconds and ids made around them (before, just after,
    # up to and past the largest chunk)
    start_ms = SECOND * INNER_MS
    used: set[tuple[str, int]] = set()
    for due_ms in range(start_ms - INNER_MS, start_ms + 2 * INNER_MS):
        for offset_ms in ID_OFFSETS_MS:
            enqueued_ms = start_ms + offset_ms
            task_id = f"{enqueued_ms:012x}0000abcdef"
            inner = bucket_of(PendingName(due_ms, task_id, 0)).split("/")[1]
            used.add((inner, enqueued_ms))
    # Then the filter admits an id in a bucket exactly when some due time puts it there
    inners = {inner for inner, _ in used}
    assert any("-" in inner for inner in inners) and any("-" not in inner for inner in inners)
    for inner in inners:
        for offset_ms in ID_OFFSETS_MS:
            enqueued_ms = start_ms + offset_ms
            assert may_hold_id(inner, enqueued_ms) == ((inner, enqueued_ms) in used), (
                inner,
                offset_ms,
            )


def _reference(pending: PendingDir, bucket: Bucket, now_ms: int) -> tuple[int, int, int, int]:
    """(due, delayed, damaged, oldest due or -1), name by name."""
    due = delayed = damaged = 0
    oldest = -1
    for name in pending.bucket_entries(bucket):
        if name is None:
            damaged += 1
        elif name.due_ms <= now_ms:
            due += 1
            oldest = name.due_ms if oldest < 0 else min(oldest, name.due_ms)
        else:
            delayed += 1
    return due, delayed, damaged, oldest


@pytest.mark.parametrize("odd", ["none", "garbage", "fifo", "temporary", "unicode-digits"])
@pytest.mark.parametrize("now_offset_ms", [-1, 0, 500, 999, 5_000])
def test_a_listed_bucket_counts_as_a_name_by_name_count_would(
    tmp_path: Path, odd: str, now_offset_ms: int
) -> None:
    # Given a bucket of tasks due all through one second (some retried, one misplaced a
    # second later), and maybe an entry that is not a task file
    root = tmp_path / "pending"
    pending = PendingDir(
        str(root) + "/", queue_root=str(tmp_path), tmp_dir=str(tmp_path), durable=False
    )
    start_ms = SECOND * INNER_MS
    folder = root / bucket_of(PendingName(start_ms, f"{start_ms:012x}0000abcdef", 0))
    folder.mkdir(parents=True)
    for n, due_ms in enumerate([*range(start_ms, start_ms + INNER_MS, 37), start_ms + 1_500]):
        (folder / str(PendingName(due_ms, f"{due_ms - 5:012x}{n:04x}abcdef", n % 3))).touch()
    oddity = {
        "garbage": "notes.txt",
        "fifo": str(PendingName(start_ms + 3, f"{start_ms:012x}ffffabcdef", 0)),
        "temporary": ".write.tmp",
        "unicode-digits": "\u0661" * 13 + f"_{start_ms:012x}eeeeabcdef_0.json",
    }.get(odd)
    if odd == "fifo":
        make_entry(folder / str(oddity), "fifo")
    elif oddity is not None:
        (folder / oddity).touch()
    bucket = Bucket(str(folder), start_ms, os.stat(folder).st_mtime_ns)
    now_ms = start_ms + now_offset_ms
    # When it is counted, Then the counts are those of a name-by-name count
    counted = census._count_bucket(pending, bucket, now_ms)
    oldest = -1 if counted.oldest_ms is None else counted.oldest_ms
    assert (counted.due, counted.delayed, counted.damaged, oldest) == _reference(
        pending, bucket, now_ms
    )
    ids = [name.task_id for name in pending.bucket_entries(bucket) if name is not None]
    assert counted.id_range() == [int(min(ids), 16), int(max(ids), 16)]
