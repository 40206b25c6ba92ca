"""The census of ``pending/``: what it lets a reader skip, and who keeps it."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from tm_testing import FakeClock, ListingLog, make_task
from tracemind.backend.file import census
from tracemind.backend.file.stores import Stores, open_stores
from tracemind.config import DataDirs
from tracemind.errors import LockTimeout
from tracemind.flows import FlowSnapshot
from tracemind.queue.names import PendingName, new_task_id
from tracemind.submit import Submission


def _backlog(stores: Stores, clock: FakeClock, seconds: int, per_second: int) -> list[str]:
    """Tasks in ``seconds`` consecutive buckets (the fake clock is ahead of the real one, so
    their directories are settled as soon as the clock has moved past them)."""
    ids = []
    for _ in range(seconds):
        tasks = [make_task(clock) for _ in range(per_second)]
        stores.queue.enqueue(tasks)
        ids += [t.task_id for t in tasks]
        clock.advance(1.0)
    clock.advance(5.0)
    return ids


def test_finding_an_unknown_id_lists_no_bucket_the_census_counted(
    stores: Stores, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a backlog over 5 buckets that a serving process has counted
    ids = _backlog(stores, clock, seconds=5, per_second=20)
    stores.queue.refresh_census()
    # When ids of no task are looked up: one from long before the backlog, one made now
    log = ListingLog().install(monkeypatch)
    unknown = ["000000000000" + "0000" + "abcdef", new_task_id(clock())]
    found = [stores.queue.find(task_id) for task_id in unknown]
    # Then each is nowhere, and no bucket was listed to say so
    assert found == [None, None]
    assert log.buckets() == []
    # and one among the backlog's own ids is looked for only in the bucket its id falls in
    assert stores.queue.find(ids[50][:-6] + "ffffff") is None
    monkeypatch.undo()
    assert len(set(log.buckets())) == 1
    # while a task in one of them is still found (its bucket is listed), and so is a retried
    # copy of another in a bucket that changed since the census
    assert stores.queue.find(ids[42]) is not None
    lease = stores.queue.lease("c1", 30.0)
    assert lease is not None
    from tracemind.queue.protocol import Failure

    stores.queue.retry(lease, Failure("again"), 0.0)
    info = stores.queue.find(lease.task_id)
    assert info is not None and info.attempts == 1


def test_a_bucket_changed_since_the_census_is_listed_again(
    stores: Stores, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a counted backlog, then a task of an older id put back into its newest bucket
    # (as a recovery or a requeue would)
    ids = _backlog(stores, clock, seconds=3, per_second=5)
    stores.queue.refresh_census()
    newest = max(p for p in stores.queue.pending_dir.glob("*/*") if p.is_dir())
    old = make_task(FakeClock(clock() - 3600))
    target = newest / f"{int(newest.name) * 1000:013d}_{old.task_id}_1.json"
    target.write_bytes(b"{}")
    os.utime(newest, ns=(os.stat(newest).st_atime_ns, os.stat(newest).st_mtime_ns + 1))
    # When it is looked up, Then it is found: its bucket's mtime no longer matches the census
    log = ListingLog().install(monkeypatch)
    info = stores.queue.find(old.task_id)
    monkeypatch.undo()
    assert info is not None and info.attempts == 1
    assert str(newest) in log.buckets()
    assert len(ids) == 15


def test_writers_keep_the_census_of_a_queue_no_daemon_serves(
    stores: Stores, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given producers writing batches while no daemon serves the queue (each writer brings the
    # census up to date when it is older than CENSUS_WRITER_AGE_S: here, every time)
    from tracemind.backend.file import queue_writes as file_backend

    monkeypatch.setattr(file_backend, "CENSUS_WRITER_AGE_S", 0.0)
    for _ in range(6):
        stores.queue.enqueue([make_task(clock) for _ in range(50)])
        clock.advance(1.0)
    monkeypatch.undo()
    clock.advance(5.0)
    # When a reader counts the queue
    log = ListingLog().install(monkeypatch)
    stats = stores.queue.stats()
    monkeypatch.undo()
    # Then the counts are exact, and at most the last bucket was listed: the last writer's
    # census covers it unless it changed in the file system's tick of that census (the reader
    # writes nothing)
    assert (stats.pending, stats.delayed, stats.damaged) == (300, 0, 0)
    newest = max(p for p in stores.queue.pending_dir.glob("*/*") if p.is_dir())
    assert set(log.buckets()) <= {str(newest)}


def test_a_writer_within_seconds_of_the_census_lists_nothing_for_it(
    stores: Stores, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a queue whose census a writer has just brought up to date
    from tracemind.backend.file import queue_writes as file_backend

    monkeypatch.setattr(file_backend, "CENSUS_WRITER_AGE_S", 60.0)  # (a slow machine)
    _backlog(stores, clock, seconds=3, per_second=10)
    stores.queue.keep_census()
    # When another task is enqueued right after, Then no directory is listed for the census
    log = ListingLog().install(monkeypatch)
    stores.queue.enqueue([make_task(clock)])
    monkeypatch.undo()
    assert log.listed == []


def test_a_batch_leaves_a_census_that_covers_it_whatever_the_census_age(
    stores: Stores, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a census a writer has just brought up to date, and writers that pass only once a
    # minute on their own (a slow machine)
    from tracemind.backend.file import queue_writes as file_backend

    monkeypatch.setattr(file_backend, "CENSUS_WRITER_AGE_S", 60.0)
    monkeypatch.setattr(file_backend, "CENSUS_WRITER_BATCH_TASKS", 20)
    _backlog(stores, clock, seconds=2, per_second=10)
    stores.queue.keep_census()
    # When one call enqueues a batch (of the batch size) and another a task less
    stores.queue.enqueue([make_task(clock) for _ in range(20)])
    clock.advance(1.0)
    stores.queue.enqueue([make_task(clock) for _ in range(19)])
    clock.advance(5.0)
    # Then a reader lists only the bucket of the smaller call: the batch passed on its way
    log = ListingLog().install(monkeypatch)
    stats = stores.queue.stats()
    monkeypatch.undo()
    assert (stats.pending, stats.delayed, stats.damaged) == (59, 0, 0)
    newest = max(p for p in stores.queue.pending_dir.glob("*/*") if p.is_dir())
    assert log.buckets() == [str(newest)]


def test_a_batch_does_not_wait_for_a_file_system_clock_of_whole_seconds(
    stores: Stores, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a file system whose timestamps are whole seconds (it would tick once a second)
    from tracemind.backend.file import census
    from tracemind.backend.file import queue_writes as file_backend

    probes: list[int] = []

    def whole_seconds(tmp_dir: str) -> int:
        probes.append(1)
        return 1_800_000_000 * 1_000_000_000

    monkeypatch.setattr(census, "fs_clock_ns", whole_seconds)
    monkeypatch.setattr(file_backend, "CENSUS_WRITER_BATCH_TASKS", 20)
    # When a batch is enqueued, Then its census pass reads that clock once and waits for no tick
    stores.queue.enqueue([make_task(clock) for _ in range(20)])
    assert probes == [1]


def test_a_writer_of_one_task_at_a_time_looks_at_a_fresh_census_once(
    stores: Stores, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a writer that has just kept the census
    from tracemind.backend.file import queue_writes as file_backend

    stores.queue.enqueue([make_task(clock)])
    looks: list[str] = []
    real_file_state = census.file_state

    def file_state(queue_root: str, now_s: float) -> tuple[float, int] | None:
        looks.append(queue_root)
        return real_file_state(queue_root, now_s)

    monkeypatch.setattr(census, "file_state", file_state)
    # When it enqueues 20 more tasks one call each, Then it looks at the census at most once
    for _ in range(20):
        stores.queue.enqueue([make_task(clock)])
    assert len(looks) <= 1
    # and once the census may be due again (its pace past), it looks again
    later_s = time.monotonic() + file_backend.CENSUS_WRITER_AGE_S + 1.0
    monkeypatch.setattr(file_backend.time, "monotonic", lambda: later_s)
    looks.clear()
    stores.queue.enqueue([make_task(clock)])
    assert len(looks) == 1


def test_a_writer_lists_at_most_its_budget_of_names_for_the_census(
    stores: Stores, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a backlog of 6 settled buckets of 20 tasks, no census, and a budget of 30 names
    from tracemind.backend.file import queue_writes as file_backend

    _backlog(stores, clock, seconds=6, per_second=20)
    (stores.queue.root / "census.json").unlink()
    monkeypatch.setattr(file_backend, "CENSUS_WRITER_BUDGET", 30)
    # When a writer keeps the census, Then it lists two buckets (stopping once past 30 names)
    log = ListingLog().install(monkeypatch)
    stores.queue.keep_census()
    monkeypatch.undo()
    assert len(log.buckets()) == 2


def test_a_keyed_batch_keeps_the_census_too(
    stores: Stores, dirs: DataDirs, clock: FakeClock, echo_snapshot: FlowSnapshot
) -> None:
    # Given settled buckets that no census covers yet
    _backlog(stores, clock, seconds=3, per_second=10)
    (stores.queue.root / "census.json").unlink()
    # When a batch of keyed tasks only is submitted (written, then its keys) by a writer that
    # has not looked at the census before (another process)
    items = [Submission({}, f"k{n}") for n in range(3)]
    writer = open_stores(dirs, durable=False, clock=clock)
    writer.submitter(60.0).submit_many(echo_snapshot, items)
    # Then the census counts the settled buckets (and the batch's own, once the file system's
    # clock ticked after it was written)
    cached = census.load(str(stores.queue.root))
    assert cached is not None and len(cached) in (3, 4)
    assert [cached[key][1] for key in sorted(cached)] == [10, 10, 10, 3][: len(cached)]


def test_a_keyed_batch_keeps_the_census_after_letting_its_keys_go(
    stores: Stores, clock: FakeClock, echo_snapshot: FlowSnapshot, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a keyed batch (its census pass may wait for the file system's clock to tick)
    items = [Submission({}, f"k{n}") for n in range(20)]
    stripes = {stores.keys.stripe(item.idempotency_key or "") for item in items}
    free_when_kept: list[bool] = []

    def keep_census(wrote: int = 0) -> None:
        try:  # (another open file description: a lock the batch still held would refuse)
            with stores.keys.locked_stripes(stripes, timeout_s=0.0):
                free_when_kept.append(True)
        except LockTimeout:
            free_when_kept.append(False)

    monkeypatch.setattr(stores.queue, "keep_census", keep_census)
    # When it is submitted, Then its census pass runs once its keys' locks are free again
    stores.submitter(60.0).submit_many(echo_snapshot, items)
    assert free_when_kept == [True]


def _uncovered_backlog(stores: Stores, clock: FakeClock, seconds: int) -> list[str]:
    """A settled backlog of ``seconds`` buckets of 20 tasks that no census covers (what a
    queue filled while no daemon served it looks like after the last writer's census)."""
    ids = _backlog(stores, clock, seconds=seconds, per_second=20)
    (stores.queue.root / "census.json").unlink(missing_ok=True)
    return ids


def test_an_unknown_id_lists_each_uncovered_bucket_once_over_all_passes(
    stores: Stores, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given 4 settled buckets that no census covers
    _uncovered_backlog(stores, clock, seconds=4)
    # When an id from before them all (which any bucket of its second may hold) is looked up
    log = ListingLog().install(monkeypatch)
    found = stores.queue.find("000000000000" + "0000" + "abcdef")
    monkeypatch.undo()
    # Then it is nowhere, and each bucket was listed once, not once per pass
    assert found is None
    assert len(log.buckets()) == 4 and len(set(log.buckets())) == 4


def test_an_id_lists_only_the_buckets_whose_names_can_hold_it(
    stores: Stores, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given uncovered buckets, one of them a chunk (tasks whose ids were made 5 s after their
    # due time, which was given in the past)
    _uncovered_backlog(stores, clock, seconds=3)
    late = make_task(clock, due_in_s=-5.0)
    stores.queue.enqueue([late])
    (stores.queue.root / "census.json").unlink(missing_ok=True)
    chunk = next(p for p in stores.queue.pending_dir.glob("*/*-*"))
    assert chunk.name.endswith("-005000")
    clock.advance(5.0)
    # When an id made now is looked up, Then no bucket is listed (each holds ids made no
    # later than its second, or 5 s after it)
    log = ListingLog().install(monkeypatch)
    assert stores.queue.find(new_task_id(clock())) is None
    assert log.buckets() == []
    # and an id made 5 s after a due time of the chunk's second lists that chunk only
    assert stores.queue.find(late.task_id[:-6] + "ffffff") is None
    monkeypatch.undo()
    assert log.buckets() == [str(chunk)]
    found = stores.queue.find(late.task_id)
    assert found is not None and found.task_id == late.task_id


def test_counting_an_uncovered_bucket_parses_no_name(
    stores: Stores, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given 3 uncovered buckets of task files
    _uncovered_backlog(stores, clock, seconds=3)
    # When a reader counts them
    parsed: list[str] = []
    real_parse = PendingName.parse

    def counting_parse(name: str) -> PendingName | None:
        parsed.append(name)
        return real_parse(name)

    monkeypatch.setattr(PendingName, "parse", staticmethod(counting_parse))
    log = ListingLog().install(monkeypatch)
    stats = stores.queue.stats()
    monkeypatch.undo()
    # Then the counts are exact, each bucket was listed once, and no name was parsed
    assert (stats.pending, stats.delayed, stats.damaged) == (60, 0, 0)
    assert len(log.buckets()) == 3
    assert parsed == []


def _age(folder: Path, seconds: float) -> None:
    """Give a directory an mtime ``seconds`` in the past (of the real clock)."""
    old_ns = time.time_ns() - int(seconds * 1e9)
    os.utime(folder, ns=(old_ns, old_ns))


def test_a_task_written_just_after_the_census_was_read_is_counted(
    stores: Stores, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given 3 buckets that a serving process counted once they had settled
    _backlog(stores, clock, seconds=3, per_second=5)
    buckets = sorted(p for p in stores.queue.pending_dir.glob("*/*") if p.is_dir())
    for folder in buckets:
        _age(folder, 10.0)
    stores.queue.refresh_census()
    assert len(census.load(str(stores.queue.root)) or {}) == 3
    # When a task lands in one of them right after a reader has read the census
    real_load = census.load

    def load_then_write(root: str) -> dict[str, list[int]] | None:
        cached = real_load(root)
        name = f"{int(buckets[1].name) * 1000 + 1:013d}_{new_task_id(clock() - 3600)}_1.json"
        (buckets[1] / name).write_bytes(b"{}")
        return cached

    monkeypatch.setattr(census, "load", load_then_write)
    stats = stores.queue.stats()
    monkeypatch.undo()
    # Then it is counted: its bucket's mtime is no longer the one in the census
    assert stats.pending == 16


@pytest.mark.parametrize("settled", [True, False], ids=["settled", "same-tick"])
def test_a_task_moved_into_a_bucket_after_a_pass_listed_it_is_found(
    dirs: DataDirs, monkeypatch: pytest.MonkeyPatch, settled: bool
) -> None:
    # Given uncovered buckets on a clock that is the real one: settled ones (10 s old), or
    # ones written just now
    clock = FakeClock(time.time())
    stores = open_stores(dirs, durable=False, clock=clock)
    stores.queue.enqueue([make_task(clock) for _ in range(5)])
    folder = next(p for p in stores.queue.pending_dir.glob("*/*") if p.is_dir())
    if settled:
        _age(folder, 10.0)
    (stores.queue.root / "census.json").unlink(missing_ok=True)
    # When, after the first pass of a lookup listed that bucket, the task is renamed into it
    # (a retry) — keeping the bucket's mtime when it was not settled (the same timestamp tick
    # as its last change), changing it otherwise (any later change does)
    moved = make_task(FakeClock(clock() - 3600))
    target = folder / f"{int(folder.name[:10]) * 1000:013d}_{moved.task_id}_1.json"
    real_find_once = stores.queue._find_once
    passes: list[int] = []

    def find_once_then_move(task_id: str, search: Any = None) -> Any:
        info = real_find_once(task_id, search)
        if not passes:
            before = os.stat(folder)
            target.write_bytes(b"{}")
            if not settled:
                os.utime(folder, ns=(before.st_atime_ns, before.st_mtime_ns))
        passes.append(1)
        return info

    monkeypatch.setattr(stores.queue, "_find_once", find_once_then_move)
    info = stores.queue.find(moved.task_id)
    # Then a later pass finds it
    assert len(passes) == 2
    assert info is not None and info.attempts == 1


def _stamp(folders: list[Path], base_ns: int) -> list[int]:
    """Give the directories mtimes a second apart from ``base_ns`` on; returns them."""
    stamps = [base_ns + n * 1_000_000_000 for n in range(len(folders))]
    for folder, stamp in zip(folders, stamps, strict=True):
        os.utime(folder, ns=(stamp, stamp))
    return stamps


def test_a_writer_keeps_only_buckets_that_changed_before_the_file_systems_clock(
    stores: Stores, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given 3 buckets that last changed a second apart, and no census
    _uncovered_backlog(stores, clock, seconds=3)
    folders = sorted(p for p in stores.queue.pending_dir.glob("*/*") if p.is_dir())
    stamps = _stamp(folders, time.time_ns() - 10_000_000_000)
    # When a writer keeps the census while the file system's clock reads the middle one's
    # mtime (it changed in that very tick: a change after the listing could keep it)
    monkeypatch.setattr(census, "fs_clock_ns", lambda tmp_dir: stamps[1])
    stores.queue.keep_census()
    # Then only the bucket that changed before that tick is kept
    keys = sorted(census.load(str(stores.queue.root)) or {})
    assert keys == [str(folders[0].relative_to(stores.queue.pending_dir))]
    # and when a task lands in the middle one in that same tick (its mtime unchanged),
    # a reader still counts it
    name = f"{int(folders[1].name) * 1000 + 7:013d}_{new_task_id(clock() - 3600)}_0.json"
    (folders[1] / name).write_bytes(b"{}")
    os.utime(folders[1], ns=(stamps[1], stamps[1]))
    assert stores.queue.stats().pending == 61
    # When the clock has moved one nanosecond past it, Then both are kept
    (stores.queue.root / "census.json").unlink()
    monkeypatch.setattr(census, "fs_clock_ns", lambda tmp_dir: stamps[1] + 1)
    stores.queue.keep_census()
    assert len(census.load(str(stores.queue.root)) or {}) == 2


def test_a_writer_keeps_the_bucket_of_the_current_second_for_readers_after_it(
    stores: Stores, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given tasks due through the current second, some not yet due, written a while ago
    second_s = float(int(clock()))
    clock.now_s = second_s + 0.1
    tasks = [make_task(clock, due_in_s=offset) for offset in (0.0, 0.2, 0.7)]
    stores.queue.enqueue(tasks)
    clock.now_s = second_s + 0.5
    (stores.queue.root / "census.json").unlink()
    folder = next(p for p in stores.queue.pending_dir.glob("*/*") if p.is_dir())
    _stamp([folder], time.time_ns() - 10_000_000_000)
    # When a writer keeps the census within that second
    stores.queue.keep_census()
    # Then the bucket is kept with all 3 tasks and the first due time
    (entry,) = (census.load(str(stores.queue.root)) or {}).values()
    assert entry[1:4] == [3, 0, int((second_s + 0.1) * 1000)]
    # and a reader within the second still lists it (one task is not due yet) ...
    log = ListingLog().install(monkeypatch)
    within = stores.queue.stats()
    # ... while one after it takes the census (all due) and lists nothing
    clock.advance(1.0)
    after = stores.queue.stats()
    monkeypatch.undo()
    assert (within.pending, within.delayed) == (2, 1)
    assert (after.pending, after.delayed) == (3, 0)
    assert log.buckets() == [str(folder)]
    assert after.oldest_pending_age_s == pytest.approx(1.4)


def test_the_file_systems_clock_falls_between_the_changes_before_and_after_it(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "bucket"
    folder.mkdir()
    (folder / "first").touch()
    before_ns = os.stat(folder).st_mtime_ns
    clock_ns = census.fs_clock_ns(str(tmp_path))
    (folder / "second").touch()
    after_ns = os.stat(folder).st_mtime_ns
    assert clock_ns is not None and before_ns <= clock_ns <= after_ns
    assert [p.name for p in tmp_path.iterdir()] == ["bucket"]  # (its file is gone)
    assert census.fs_clock_ns(str(tmp_path / "missing")) is None


# -- the dead letters' count -------------------------------------------------------------------

_DEAD_WRITER = """
import os, signal, sys, time
from tracemind.backend.file.stores import open_stores
from tracemind.config import DataDirs
from tracemind.queue.names import new_task_id
from tracemind.queue.protocol import Failure
from tracemind.queue.records import dead_entry, new_record

root, count, how = sys.argv[1], int(sys.argv[2]), sys.argv[3]
stores = open_stores(DataDirs.of(root + "/queue", root + "/idem", root + "/dlq"), durable=False)
stores.queue.prepare()
for i in range(count):
    task_id = new_task_id()
    record = new_record(task_id=task_id, flow={"id": "f"}, inputs={}, max_attempts=1,
                        enqueued_at=time.time())
    stores.queue.dlq.put(task_id, dead_entry(record, 1, "0badc0de", Failure("boom"), time.time()))
if how == "killed":
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _write_dead_letters(root: Path, count: int, how: str) -> int:
    """Run a process that writes ``count`` dead letters under ``root`` and then exits
    (``"exits"``) or is SIGKILLed (``"killed"``); its return code."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _DEAD_WRITER, str(root), str(count), how],
        capture_output=True,
        timeout=120,
        check=False,
    )
    return done.returncode


def _dead_stats(root: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[int, bool]:
    """(dead letters the counts report, whether they listed the dead-letter directory)."""
    dirs = DataDirs(root / "queue", root / "idem", root / "dlq")
    with monkeypatch.context() as patched:
        log = ListingLog().install(patched)
        dead = open_stores(dirs, durable=False).queue.counts()[1]
    return dead, os.fspath(root / "dlq") in [p.rstrip("/") for p in log.listed]


def test_a_process_that_wrote_dead_letters_leaves_their_count_as_it_exits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a process that wrote 300 dead letters and exited, no daemon ever serving the queue
    assert _write_dead_letters(tmp_path, 300, "exits") == 0
    # When the queue's counts are read
    dead, listed = _dead_stats(tmp_path, monkeypatch)
    # Then the dead letters are counted from the census, without a listing
    assert (dead, listed) == (300, False)
    entry = (census.load(os.fspath(tmp_path / "queue")) or {})[census.DLQ_KEY]
    assert entry[1:3] == [300, 0]


def test_a_count_left_before_more_dead_letters_is_not_taken_and_a_killed_writer_leaves_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a count left by a process that exited, then 40 more dead letters written by one that
    # was killed before it could leave a count
    assert _write_dead_letters(tmp_path, 100, "exits") == 0
    left = (census.load(os.fspath(tmp_path / "queue")) or {})[census.DLQ_KEY]
    assert _write_dead_letters(tmp_path, 40, "killed") == -9
    # When the queue's counts are read, Then the directory is listed and every entry counted
    assert _dead_stats(tmp_path, monkeypatch) == (140, True)
    assert (census.load(os.fspath(tmp_path / "queue")) or {})[census.DLQ_KEY] == left


def test_no_count_is_left_where_the_file_systems_clock_does_not_move_past_the_last_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stores: Stores
) -> None:
    # Given a dead-letter directory whose last change the file system's clock has not passed
    # (a clock that keeps whole seconds: it is not waited for)
    dlq_root = os.fspath(stores.queue.dlq.root)
    os.makedirs(os.path.join(dlq_root, "tmp"))
    monkeypatch.setattr(census, "fs_clock_ns", lambda tmp_dir: 5_000_000_000)
    os.utime(dlq_root, ns=(5_000_000_000, 5_000_000_000))
    # When a writer would leave a count, Then it leaves none
    assert census.settle_dead(dlq_root) is None
