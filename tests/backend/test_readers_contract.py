"""Guarantees 12 (readers never write) and 6 (damage is local) of the Backend contract, and 5
(durability against SIGKILL), against every backend.

"Never write" is checked below the contract where the backend's scheme has a
``backend_testing.RAW_STATES`` entry (everything it stores, before and after the readers);
damage is stored through ``backend_testing.DAMAGE`` where the scheme has one, and otherwise only
through the contract's own verbs (records whose fields have the wrong types).
"""

from __future__ import annotations

import subprocess
import time
from typing import Any

import pytest

from backend_testing import DAMAGE, LEASE_S, RAW_STATES, Subject, process_command, process_env
from tm_testing import make_task
from tracemind.backend.protocol import Backend
from tracemind.backend.registration import registration
from tracemind.queue.protocol import Failure, TaskStatus

UNKNOWN_ID = "0" * 26


def _populate(subject: Subject) -> list[str]:
    """A task in every state, keys, an audit copy and a registration; the task ids."""
    succeeded = subject.succeed("k-done")
    dead = subject.kill("k-dead")
    assert subject.backend.dead_letters.purge(subject.kill())
    inflight = subject.submit()
    subject.lease(inflight)
    delayed = subject.submit()
    subject.backend.queue.retry(subject.lease(delayed), Failure("again"), 600.0)
    cancelled = subject.submit()
    assert subject.backend.cancel(cancelled) == "cancelled"
    pending = subject.submit("k-pending")
    subject.backend.registry.register(
        registration(
            "d-one",
            kind="daemon",
            state_dir=None,
            started_s=subject.clock(),
            workers={"configured": 1, "alive": 1, "busy": 1},
            draining=False,
        )
    )
    return [succeeded, dead, inflight, delayed, cancelled, pending]


def _read_everything(reader: Backend, task_ids: list[str]) -> list[Any]:
    """Every reader verb of the contract, once; what each answered."""
    found = [reader.queue.find(t) for t in [*task_ids, UNKNOWN_ID]]
    return [
        reader.queue.stats(),
        reader.counts(),
        reader.queue.has_waiting(),
        reader.queue.held_by("c"),
        [(i.status, i.attempts) if i else None for i in found],
        reader.dead_letters.newest_first(),
        reader.dead_letters.newest_first(limit=1),
        [reader.dead_letters.get(t) for t in [*task_ids, UNKNOWN_ID]],
        reader.dead_letters.count(),
        [e["instance_id"] for e in reader.registry.live()],
        reader.problems(),
    ]


def _raw_state(backend: Backend) -> object:
    raw = RAW_STATES.get(backend.location.scheme)
    if raw is None:
        pytest.skip(f"no raw state for {backend.location.scheme}:// (backend_testing.RAW_STATES)")
    return raw(backend)


def test_readers_change_nothing_the_backend_stores(subject: Subject) -> None:
    # Given a location with a task in every state, seen by a fresh view (another process)
    task_ids = _populate(subject)
    subject.backend.queue.flush()
    reader = subject.reopen()
    before = _raw_state(reader)
    # When every reader verb runs, twice
    first = _read_everything(reader, task_ids)
    second = _read_everything(reader, task_ids)
    # Then nothing stored changed, and the readers saw what is there
    assert _raw_state(reader) == before
    assert first == second
    statuses = first[4]
    assert statuses == [
        (TaskStatus.SUCCEEDED, 1),
        (TaskStatus.DEAD, 1),
        (TaskStatus.INFLIGHT, 1),
        (TaskStatus.DELAYED, 1),
        (TaskStatus.CANCELLED, 0),
        (TaskStatus.PENDING, 0),
        None,
    ]
    assert first[8] == 1 and first[9] == ["d-one"]


def test_readers_of_a_location_never_written_create_nothing(subject: Subject) -> None:
    reader = subject.reopen()
    before = _raw_state(reader)

    answers = _read_everything(reader, [])

    assert _raw_state(reader) == before
    stats, counts = answers[0], answers[1]
    assert (stats.pending, stats.delayed, stats.inflight, stats.damaged) == (0, 0, 0, 0)
    assert counts[1:] == (0, 0)
    assert answers[2:] == [False, 0, [None], [], [], [None], 0, [], []]


# -- damage is local ---------------------------------------------------------------------------


def test_records_with_fields_of_the_wrong_type_affect_only_themselves(subject: Subject) -> None:
    # Given a task whose record has fields of the wrong types, between two good ones
    queue = subject.backend.queue
    good_first = make_task(subject.clock, due_in_s=-2)
    odd = make_task(subject.clock, due_in_s=-1)
    odd.record.update(max_attempts="three", history="none", input=[1], trigger=5, flow_id=7)
    good_last = make_task(subject.clock)
    queue.enqueue([good_first, odd, good_last])
    # Then readers answer
    assert queue.stats().pending == 3
    info = queue.find(odd.task_id)
    assert info is not None and info.status is TaskStatus.PENDING
    # And each task is leased once, in order
    leases = [queue.lease("c1", LEASE_S) for _ in range(4)]
    assert [lease.task_id if lease else None for lease in leases] == [
        good_first.task_id,
        odd.task_id,
        good_last.task_id,
        None,
    ]
    # And the odd one's lost lease goes to the dead letters (no valid retry count), readable
    subject.clock.advance(LEASE_S + 1)
    assert queue.recover() == 3
    info = queue.find(odd.task_id)
    assert info is not None and info.status is TaskStatus.DEAD
    entry = subject.backend.dead_letters.get(odd.task_id)
    assert entry is not None and entry["input"] == [1]
    assert subject.backend.dead_letters.count() == 1
    assert sorted(lease.task_id for lease in _drain(subject.backend)) == sorted(
        [good_first.task_id, good_last.task_id]
    )


def _drain(backend: Backend) -> list[Any]:
    leases = []
    while (lease := backend.queue.lease("drain", LEASE_S)) is not None:
        backend.queue.ack(lease, {})
        leases.append(lease)
    return leases


def _damage(subject: Subject, what: str) -> Any:
    hooks = DAMAGE.get(subject.backend.location.scheme, {})
    if what not in hooks:
        pytest.skip(f"no {what} damage for {subject.backend.location.scheme}:// (DAMAGE)")
    return hooks[what]


def test_a_corrupt_record_never_hides_another_task_and_never_runs(subject: Subject) -> None:
    # Given three waiting tasks, the middle one's stored record torn
    tasks = [make_task(subject.clock, due_in_s=-3 + n) for n in range(3)]
    subject.backend.queue.enqueue(tasks)
    _damage(subject, "record")(subject.backend, tasks[1].task_id)
    reader = subject.reopen()
    # Then readers answer about every task
    for task in tasks:
        info = reader.queue.find(task.task_id)
        assert info is not None and info.status is TaskStatus.PENDING
    reader.counts()
    assert reader.dead_letters.newest_first() == []
    # And consumers run the two others, once each, and never the torn one
    ran = [lease.task_id for lease in _drain(subject.backend)]
    assert ran == [tasks[0].task_id, tasks[2].task_id]
    assert reader.queue.stats().pending == 0


def test_an_unknown_entry_never_counts_as_a_task(subject: Subject) -> None:
    task = make_task(subject.clock)
    subject.backend.queue.enqueue([task])
    _damage(subject, "unknown")(subject.backend)
    reader = subject.reopen()

    stats = reader.queue.stats()

    assert (stats.pending, stats.delayed, stats.inflight) == (1, 0, 0)
    assert [lease.task_id for lease in _drain(subject.backend)] == [task.task_id]
    assert reader.queue.stats().pending == 0


# -- durability against SIGKILL ----------------------------------------------------------------


def _die_after(subject: Subject, verb: str) -> str:
    """Run a process that does ``verb`` through the contract then dies by SIGKILL."""
    proc = subprocess.run(
        process_command("die-after", verb, subject.backend.location, subject.flow_path),
        env=process_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == -9, proc.stderr
    return proc.stdout.strip()


def test_an_enqueue_that_returned_survives_the_sigkill_of_its_process(subject: Subject) -> None:
    task_id = _die_after(subject, "enqueue")

    reader = subject.reopen()
    info = reader.queue.find(task_id)
    assert info is not None and info.status is TaskStatus.PENDING
    lease = reader.queue.lease("c1", LEASE_S)
    assert lease is not None and lease.task_id == task_id


def test_an_ack_that_returned_survives_the_sigkill_of_its_process(subject: Subject) -> None:
    # Given a task acked by a process killed the instant its ack returned (the task is due
    # by that process's clock: the real one)
    task = make_task(time.time)
    subject.backend.queue.enqueue([task])
    task_id = task.task_id
    assert _die_after(subject, "ack") == task_id
    # When recovery runs after its lease expired (this clock is weeks after the real one)
    reader = subject.reopen()
    reader.queue.recover(dead_consumers=["doomed"])
    # Then the task is succeeded and never runs again
    info = reader.queue.find(task_id)
    assert info is not None and info.status is TaskStatus.SUCCEEDED
    assert info.record.get("result") == {"acked": True}
    assert reader.queue.lease("c1", LEASE_S) is None
