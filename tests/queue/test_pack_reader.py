"""Reading a task out of its pack by remembered offsets (tracemind.backend.file.pack_reader).

What must hold: a reader returns exactly what reading the whole file returns, for every task of
a pack, with lines appended for some tasks after it first read the pack, for a task its writer
added afterwards, and when the file it remembers now holds another pack; and once it read a
pack, it reads each further task's lines without reading the pack again.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from special_entries import NOT_REGULAR, make_entry
from tm_testing import FakeClock, make_task
from tracemind.backend.file import pack_reader, packs
from tracemind.backend.file.pack_reader import PackReader
from tracemind.backend.file.stores import Stores
from tracemind.fsutil import read_regular


def _task_paths(stores: Stores) -> dict[str, Path]:
    """Task id → its pending name (a link to its pack)."""
    return {p.name.split("_")[1]: p for p in Path(stores.queue.pending_dir).rglob("*.json")}


def _by_reader(reader: PackReader, path: Path, task_id: str) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return reader.task_bytes(fd, str(path), task_id)
    finally:
        os.close(fd)


def _whole(path: Path, task_id: str) -> bytes:
    return packs.task_bytes(read_regular(path), task_id)


@contextmanager
def _calls(
    monkeypatch: pytest.MonkeyPatch, name: str, note: Callable[..., object]
) -> Iterator[list[Any]]:
    """``note(result, *arguments)`` of every call to ``os.{name}`` meanwhile (each still made)."""
    noted: list[Any] = []
    real = getattr(os, name)

    def recording(*arguments: Any) -> Any:
        result = real(*arguments)
        noted.append(note(result, *arguments))
        return result

    with monkeypatch.context() as patch:
        patch.setattr(pack_reader.os, name, recording)
        yield noted


def _bytes_read(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The size of every ``pread`` the reader makes meanwhile."""
    return _calls(monkeypatch, "pread", lambda data, *_: len(data))


def _advised(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The inode of every file read ahead whole meanwhile (any other advice: its arguments)."""

    def inode(_: None, fd: int, *advice: int) -> object:
        whole = advice == (0, 0, os.POSIX_FADV_WILLNEED)
        return os.fstat(fd).st_ino if whole else advice

    return _calls(monkeypatch, "posix_fadvise", inode)


def test_every_task_reads_as_the_whole_pack_gives_it_with_its_appended_lines(
    stores: Stores, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a pack of 40 tasks, read once through a reader
    tasks = [make_task(clock, inputs={"n": n}) for n in range(40)]
    stores.queue.enqueue(tasks)
    paths = _task_paths(stores)
    reader = PackReader()
    first = tasks[0].task_id
    assert _by_reader(reader, paths[first], first) == _whole(paths[first], first)
    # When lines are appended for some of its tasks afterwards (acks, cancel stamps)
    for n, task in enumerate(tasks):
        if n % 3 == 0:
            packs.append_line(str(paths[task.task_id]), task.task_id, b'{"n":%d}' % n)
    # Then every task reads as the whole pack gives it, its own appended lines included
    expected = {task.task_id: _whole(paths[task.task_id], task.task_id) for task in tasks}
    with _bytes_read(monkeypatch) as sizes:
        got = {
            task.task_id: _by_reader(reader, paths[task.task_id], task.task_id) for task in tasks
        }
    assert got == expected
    # And none of those reads read the pack again: a few small ranges per task
    pack_size = paths[first].stat().st_size
    assert max(sizes) < pack_size // 4
    assert sum(sizes) < pack_size * 3


def test_a_task_its_writer_added_after_the_pack_was_read_is_found(
    stores: Stores, clock: FakeClock
) -> None:
    # Given a reader that read a pack its writer still adds to
    early = make_task(clock)
    stores.queue.enqueue([early])
    reader = PackReader()
    assert _by_reader(reader, _task_paths(stores)[early.task_id], early.task_id)
    # When the writer adds a task to the same pack
    late = make_task(clock, inputs={"late": True})
    stores.queue.enqueue([late])
    paths = _task_paths(stores)
    assert os.path.samefile(paths[early.task_id], paths[late.task_id])
    # Then the reader finds it, and still reads the first one right
    assert _by_reader(reader, paths[late.task_id], late.task_id) == _whole(
        paths[late.task_id], late.task_id
    )
    assert b'"late":true' in _by_reader(reader, paths[late.task_id], late.task_id)
    assert _by_reader(reader, paths[early.task_id], early.task_id) == _whole(
        paths[early.task_id], early.task_id
    )


def test_a_file_that_now_holds_another_pack_is_read_afresh(
    stores: Stores, clock: FakeClock
) -> None:
    # Given a reader that read every task of one pack (its offsets remembered)
    old_tasks = [make_task(clock, inputs={"n": n}) for n in range(5)]
    stores.queue.enqueue(old_tasks)
    path = _task_paths(stores)[old_tasks[0].task_id]
    reader = PackReader()
    for task in old_tasks:
        assert _by_reader(reader, path, task.task_id)
    # When its inode comes to hold another pack laid out byte for byte alike, other tasks at
    # the same offsets (as a pack made where a removed one was could be)
    new_ids = [make_task(clock).task_id for _ in old_tasks]
    replacement = path.read_bytes()
    for old, new in zip(old_tasks, new_ids, strict=True):
        replacement = replacement.replace(old.task_id.encode(), new.encode())
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, replacement, 0)
    finally:
        os.close(fd)
    # Then the reader gives what the file holds now, never a line found at the old offsets
    for old, new in zip(old_tasks, new_ids, strict=True):
        assert _by_reader(reader, path, old.task_id) == b""
        assert _by_reader(reader, path, new) == _whole(path, new)
        assert new.encode() in _whole(path, new)


def test_a_torn_record_reads_as_the_whole_pack_gives_it(stores: Stores, clock: FakeClock) -> None:
    # Given a pack whose middle record was cut short, read once through a reader
    tasks = [make_task(clock) for _ in range(3)]
    stores.queue.enqueue(tasks)
    path = _task_paths(stores)[tasks[1].task_id]
    data = read_regular(path)
    start = data.index(b"\nR " + tasks[1].task_id.encode())
    end = data.index(b"\n", start + 1)
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, b"x", end - 1)  # its closing brace gone
    finally:
        os.close(fd)
    reader = PackReader()
    assert _by_reader(reader, path, tasks[0].task_id)
    # Then each task, the torn one too, reads exactly as the whole pack gives it
    for task in tasks:
        assert _by_reader(reader, path, task.task_id) == _whole(path, task.task_id)


def test_a_pack_is_read_ahead_once_and_not_once_it_was_read(
    stores: Stores, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a pack of 10 tasks
    tasks = [make_task(clock, inputs={"n": n}) for n in range(10)]
    stores.queue.enqueue(tasks)
    paths = [_task_paths(stores)[task.task_id] for task in tasks]
    pack = paths[0].stat().st_ino
    reader = PackReader()
    # When a reader is asked to read it ahead through three of its tasks' names
    with _advised(monkeypatch) as advised:
        for path in paths[:3]:
            reader.prefetch(str(path))
    # Then it asks the kernel once
    assert advised == [pack]
    # And a reader that read the pack already does not ask at all
    other = PackReader()
    _by_reader(other, paths[0], tasks[0].task_id)
    with _advised(monkeypatch) as advised:
        other.prefetch(str(paths[1]))
    assert advised == []


@pytest.mark.parametrize("kind", [*NOT_REGULAR, "gone"])
def test_reading_ahead_skips_what_is_not_a_regular_file_without_blocking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    # Given a name that is no task's pack (a FIFO would block a plain open), or no name at all
    path = tmp_path / "0000000000000_00000000000000000000aa_0.json"
    if kind != "gone":
        make_entry(path, kind)
    # When a reader is asked to read it ahead
    with _advised(monkeypatch) as advised:
        PackReader().prefetch(str(path))
    # Then it returns at once and asks nothing
    assert advised == []


def test_a_consumer_that_meets_a_pack_reads_the_next_ones_ahead_before_it_claims_from_them(
    stores: Stores, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given 200 tasks of 2 KB inputs each: several packs, in the order the tasks are due
    tasks = [make_task(clock, inputs={"n": n, "pad": "x" * 2000}) for n in range(200)]
    stores.queue.enqueue(tasks)
    clock.advance(2)
    pack_of = {t.task_id: _task_paths(stores)[t.task_id].stat().st_ino for t in tasks}
    packs_in_order = list(dict.fromkeys(pack_of[t.task_id] for t in tasks))
    assert len(packs_in_order) >= 5
    # When one consumer leases them all, noting which packs were read ahead before each claim
    leased: list[str] = []
    ahead_at_claim: list[set[int]] = []
    with _advised(monkeypatch) as advised:
        while (lease := stores.queue.lease("c1", 30.0)) is not None:
            leased.append(lease.task_id)
            ahead_at_claim.append(set(advised))
    # Then it ran every task once, in order
    assert leased == [t.task_id for t in tasks]
    # And every pack after the first was read ahead once, before its first task was claimed
    assert sorted(advised) == sorted(packs_in_order[1:])
    first_claim = {pack_of[task_id]: n for n, task_id in reversed(list(enumerate(leased)))}
    for pack in packs_in_order[1:]:
        assert pack in ahead_at_claim[first_claim[pack] - 1], pack
