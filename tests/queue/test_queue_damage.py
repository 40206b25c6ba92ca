"""Damaged records in every directory: only the damaged record is affected, readers skip it,
writers quarantine it and log its path, and no succeeded task runs again."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tm_testing import FakeClock, damage_record, done_path, make_task, pending_path
from tracemind.backend.file.stores import Stores
from tracemind.fsutil import dump_json
from tracemind.queue.names import InflightName, PendingName
from tracemind.queue.protocol import Failure, TaskStatus
from tracemind.queue.records import dead_entry

LEASE_S = 30.0
DAMAGED_CONTENTS = {
    "empty": b"",
    "half-written": b'{"v":1,"task_id":"01',
    "not-an-object": b"[1, 2, 3]",
    "binary": b"\x00\xff\xfe garbage",
}


def _quarantined(logs: list[dict[str, Any]], path: Path) -> bool:
    return any(e.get("path") == str(path) and "quarantined" in e["event"] for e in logs)


def _drain(stores: Stores) -> list[str]:
    leased = []
    while (lease := stores.queue.lease("c1", LEASE_S)) is not None:
        stores.queue.ack(lease, {})
        leased.append(lease.task_id)
    return leased


@pytest.mark.parametrize("kind", sorted(DAMAGED_CONTENTS))
def test_a_damaged_pending_record_is_quarantined_and_the_others_still_run(
    stores: Stores, clock: FakeClock, logs: list[dict[str, Any]], kind: str
) -> None:
    # Given two good tasks around a pending record whose contents are damaged
    good = [make_task(clock), make_task(clock, due_in_s=-1)]
    stores.queue.enqueue(good)
    bad_id = make_task(clock).task_id
    bad = pending_path(stores.queue, PendingName(int(clock() * 1000) - 500, bad_id, 0))
    bad.write_bytes(DAMAGED_CONTENTS[kind])
    # Then readers do not crash on it
    info = stores.queue.find(bad_id)
    assert info is not None and info.record == {}
    # When a consumer drains the queue
    leased = _drain(stores)
    # Then both good tasks ran, the damaged one did not, and it was moved aside with a log line
    assert sorted(leased) == sorted(t.task_id for t in good)
    assert not bad.exists()
    assert list((stores.queue.root / "quarantine").iterdir())
    assert any(e.get("reason", "").startswith("unreadable task record") for e in logs)
    assert stores.queue.stats().pending == 0


def test_a_garbage_file_name_in_pending_never_counts_and_is_quarantined(
    stores: Stores, clock: FakeClock, logs: list[dict[str, Any]]
) -> None:
    task = make_task(clock)
    stores.queue.enqueue([task])
    garbage = stores.queue.pending_dir / "notes.txt"
    garbage.write_text("hello")

    stats = stores.queue.stats()
    assert (stats.pending, stats.damaged) == (1, 1)
    assert garbage.exists()  # readers leave it alone

    assert _drain(stores) == [task.task_id]
    assert not garbage.exists()
    assert _quarantined(logs, garbage)
    assert stores.queue.stats().damaged == 0


def test_a_damaged_expired_inflight_record_is_quarantined_by_recovery(
    stores: Stores, clock: FakeClock, logs: list[dict[str, Any]]
) -> None:
    # Given a lease whose file was truncated, and a good task
    stores.queue.enqueue([make_task(clock)])
    lease = stores.queue.lease("dead-0", LEASE_S)
    assert lease is not None
    inflight = stores.queue.inflight_dir / str(lease.handle)
    damage_record(inflight, lease.task_id, b'{"task_id": "tr')
    good = make_task(clock)
    stores.queue.enqueue([good])
    # When its lease expires and recovery runs
    clock.advance(LEASE_S + 1)
    stores.queue.recover()
    # Then the damaged lease is quarantined with a log line, and the good task still runs
    assert not inflight.exists()
    assert _quarantined(logs, inflight)
    assert _drain(stores) == [good.task_id]


def test_a_garbage_file_name_in_inflight_is_skipped_by_readers_and_quarantined_by_recovery(
    stores: Stores, clock: FakeClock, logs: list[dict[str, Any]]
) -> None:
    stores.queue.enqueue([make_task(clock)])
    stores.queue.prepare()
    garbage = stores.queue.inflight_dir / "core.1234"
    garbage.write_bytes(b"\x00" * 10)

    stats = stores.queue.stats()
    assert (stats.pending, stats.inflight, stats.damaged) == (1, 0, 1)
    assert stores.queue.held_by("") == 0

    stores.queue.recover()

    assert not garbage.exists()
    assert _quarantined(logs, garbage)
    assert stores.queue.stats().damaged == 0
    assert len(_drain(stores)) == 1


@pytest.mark.parametrize("kind", sorted(DAMAGED_CONTENTS))
def test_a_damaged_done_record_still_fences_the_task(
    stores: Stores, clock: FakeClock, kind: str
) -> None:
    # Given a succeeded task whose done record got damaged, and a stale pending copy of it (as a
    # recovery leaves when it returns a lease whose late ack then wrote done/)
    task = make_task(clock)
    stores.queue.enqueue([task])
    first = pending_path(stores.queue, PendingName(int(clock() * 1000), task.task_id, 0))
    stale = pending_path(stores.queue, PendingName(int(clock() * 1000), task.task_id, 1))
    stale_bytes = first.read_bytes()
    lease = stores.queue.lease("c1", LEASE_S)
    assert lease is not None
    stores.queue.ack(lease, {"ok": True})
    done_path(stores.queue, task.task_id).write_bytes(DAMAGED_CONTENTS[kind])
    stale.write_bytes(stale_bytes)
    # When consumers and recovery run
    clock.advance(LEASE_S + 1)
    stores.queue.recover()
    # Then the task never runs again, and readers still call it succeeded (marked damaged)
    assert _drain(stores) == []
    info = stores.queue.find(task.task_id)
    assert info is not None and info.status is TaskStatus.SUCCEEDED
    assert info.record == {}


def test_garbage_in_the_done_directory_affects_nothing(stores: Stores, clock: FakeClock) -> None:
    task = make_task(clock)
    stores.queue.enqueue([task])
    stores.queue.prepare()
    (stores.queue.done_dir / "garbage.json").write_bytes(b"{")
    (stores.queue.done_dir / f"{task.task_id[:-1]}.json").write_bytes(b"")

    assert _drain(stores) == [task.task_id]
    info = stores.queue.find(task.task_id)
    assert info is not None and info.status is TaskStatus.SUCCEEDED


def _dead(stores: Stores, clock: FakeClock) -> str:
    task = make_task(clock, max_attempts=1)
    stores.queue.enqueue([task])
    lease = stores.queue.lease("c1", LEASE_S)
    assert lease is not None
    stores.queue.dead_letter(lease, Failure("boom"))
    return task.task_id


def test_damaged_dlq_entries_are_skipped_by_readers_and_quarantined_by_writers(
    stores: Stores, clock: FakeClock, logs: list[dict[str, Any]]
) -> None:
    # Given one good DLQ entry, one with a torn body and a garbage file
    good = _dead(stores, clock)
    torn_id = make_task(clock).task_id
    torn = stores.dlq.root / f"{torn_id}.json"
    torn.write_bytes(b'{"task_id": "')
    garbage = stores.dlq.root / "garbage"
    garbage.write_bytes(b"x")
    # Then readers list and count only the good entry
    assert [e["task_id"] for e in stores.dlq.newest_first()] == [good]
    assert stores.dlq.count() == 1
    assert stores.dlq.get(torn_id) is None
    assert stores.queue.find(torn_id) is None
    # When a writer quarantines damaged entries
    assert stores.dlq.quarantine_damaged() == 2
    # Then both are moved aside with a log line each, and the good entry is untouched
    assert not torn.exists() and not garbage.exists()
    assert _quarantined(logs, torn) and _quarantined(logs, garbage)
    assert stores.dlq.get(good) is not None


def test_a_damaged_dlq_entry_does_not_hide_the_dead_letter_of_a_stale_lease(
    stores: Stores, clock: FakeClock
) -> None:
    # A torn DLQ entry cannot be matched by token, so the stale lease is treated as lost work
    task = make_task(clock, max_attempts=2)
    stores.queue.enqueue([task])
    lease = stores.queue.lease("c1", LEASE_S)
    assert lease is not None
    entry = dead_entry(lease.record, 1, lease.token, Failure("x"), clock())
    (stores.dlq.root).mkdir(parents=True, exist_ok=True)
    (stores.dlq.root / f"{task.task_id}.json").write_bytes(dump_json(entry)[:20])

    clock.advance(LEASE_S + 1)
    assert stores.queue.recover() == 1

    again = stores.queue.lease("c2", LEASE_S)
    assert again is not None and again.attempt == 2


def test_readers_skip_a_subdirectory_where_a_record_should_be(
    stores: Stores, clock: FakeClock
) -> None:
    stores.queue.enqueue([make_task(clock)])
    odd = pending_path(stores.queue, PendingName(0, "0" * 22, 0))
    odd.mkdir()
    os.mkdir(stores.queue.inflight_dir / str(InflightName("1" * 22, 1, "c", "0" * 8, 0)))

    assert stores.queue.find("0" * 22) is not None  # named like a task: shown, as damaged
    assert stores.queue.find("0" * 22).record == {}  # type: ignore[union-attr]
    clock.advance(1)
    stores.queue.recover()
    assert len(_drain(stores)) == 1


def test_two_damaged_files_of_one_name_are_both_kept_in_quarantine(
    stores: Stores, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given garbage of the same name in pending and inflight, quarantined in the same millisecond
    monkeypatch.setattr("tracemind.backend.file.quarantine.time.time", lambda: 1_800_000_000.0)
    stores.queue.prepare()
    for directory, text in ((stores.queue.pending_dir, "one"), (stores.queue.inflight_dir, "two")):
        (directory / "junk").write_text(text)
    # When a consumer and recovery run
    assert stores.queue.lease("c1", LEASE_S) is None
    stores.queue.recover()
    # Then neither damaged file overwrote the other
    kept = sorted(p.read_text() for p in (stores.queue.root / "quarantine").iterdir())
    assert kept == ["one", "two"]


def test_a_damaged_record_that_cannot_be_moved_is_left_in_place_and_logged(
    stores: Stores, clock: FakeClock, logs: list[dict[str, Any]]
) -> None:
    # Given a quarantine place that cannot be created (a regular file is in its way)
    good = make_task(clock)
    stores.queue.enqueue([good])
    (stores.queue.root / "quarantine").write_text("not a directory")
    garbage = stores.queue.pending_dir / "junk"
    garbage.write_text("x")
    # When a consumer meets the damaged file, it still runs the good task
    assert _drain(stores) == [good.task_id]
    # Then the damaged file stays where it was, logged as such
    assert garbage.exists()
    assert any(e["event"] == "damaged record left in place" for e in logs)


def test_records_with_fields_of_the_wrong_type_crash_no_reader_or_writer(
    stores: Stores, clock: FakeClock
) -> None:
    # Given valid JSON records whose fields have the wrong types, in every state
    odd = make_task(clock)
    odd.record["max_attempts"] = "three"
    stores.queue.enqueue([odd])
    clock.advance(0.01)
    done = make_task(clock)
    stores.queue.enqueue([done])
    dead_id = make_task(clock).task_id
    stores.dlq.put(dead_id, {"task_id": dead_id, "attempts": "x", "dead_at": None})
    stores.dlq.put("f" * 22, {"task_id": "f" * 22, "attempts": 1, "dead_at": 5.0})
    lease = stores.queue.lease("c1", LEASE_S)
    assert lease is not None and lease.task_id == odd.task_id
    other = stores.queue.lease("c1", LEASE_S)
    assert other is not None
    stores.queue.ack(other, {})
    done_path(stores.queue, done.task_id).write_bytes(dump_json({"attempts": None}))
    # Then readers answer, and the odd task's lost lease goes to the DLQ (no retries)
    found = stores.queue.find(done.task_id)
    assert found is not None and (found.status, found.attempts) == (TaskStatus.SUCCEEDED, 0)
    found = stores.queue.find(dead_id)
    assert found is not None and (found.status, found.attempts) == (TaskStatus.DEAD, 0)
    assert [e["task_id"] for e in stores.dlq.newest_first()] == ["f" * 22, dead_id]
    clock.advance(LEASE_S + 1)
    assert stores.queue.recover() == 1
    found = stores.queue.find(odd.task_id)
    assert found is not None and found.status is TaskStatus.DEAD
