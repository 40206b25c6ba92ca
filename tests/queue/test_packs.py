"""Packs: many new tasks in one file, each task a hard link to it (tracemind.backend.file.packs).

What must hold: every task reads as its own record, its acks and stamps stay its own, damage to
one record stays with it, a writer's pack is never retired while the writer lives, and after a
reboot that lost links (a power loss) a checkpoint links back exactly the tasks found nowhere —
never one that ran, died, was purged or still waits — once, however many processes replay.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tm_testing import (
    NO_THREAD_PRELUDE,
    NOBODY,
    FakeClock,
    damage_record,
    make_task,
    pending_names,
    wait_until,
)
from tracemind.backend import Location, open_backend
from tracemind.backend.file import pack_writer, packs
from tracemind.backend.file.backend import FileBackend
from tracemind.backend.file.journal_stock import JournalStock
from tracemind.backend.file.stores import Stores, open_stores
from tracemind.config import DataDirs
from tracemind.errors import QueueError
from tracemind.flows import FlowSnapshot
from tracemind.queue.names import staged_name
from tracemind.queue.protocol import Failure, NewTask, TaskStatus
from tracemind.submission import Submission

LEASE_S = 30.0
OTHER_BOOT = "00000000-0000-4000-8000-000000000000"


def _packs_dir(stores: Stores) -> Path:
    return Path(stores.queue.root) / "packs"


def _pack_names(stores: Stores) -> list[str]:
    folder = _packs_dir(stores)
    return sorted(n for n in os.listdir(folder) if n.endswith(".pack")) if folder.exists() else []


def _drain(stores: Stores) -> list[str]:
    ran = []
    while (lease := stores.queue.lease("c", LEASE_S)) is not None:
        stores.queue.ack(lease, {"ran": lease.task_id})
        ran.append(lease.task_id)
    stores.queue.flush()  # (a durable queue commits acks in groups, on a thread)
    return ran


def _lose_links(stores: Stores, task_ids: set[str]) -> None:
    """What a power loss does to links made after the last sync: their entries are gone."""
    for name in pending_names(stores.queue):
        if name.split("_")[1] in task_ids:
            [path] = Path(stores.queue.pending_dir).rglob(name)
            path.unlink()


def _written_in_another_boot(stores: Stores) -> None:
    for name in os.listdir(_packs_dir(stores)):  # packs and their journals
        path = _packs_dir(stores) / name
        data = path.read_bytes()
        assert data.startswith(packs.MAGIC)
        fd = os.open(path, os.O_WRONLY)
        try:
            os.pwrite(fd, OTHER_BOOT.encode(), len(packs.MAGIC))
        finally:
            os.close(fd)


def _one_per_call_by_a_writer_now_gone(
    stores: Stores, clock: FakeClock, count: int
) -> list[NewTask]:
    """``count`` tasks (inputs ``{"n": n}``) enqueued one per call into one pack, whose writer
    then let it go."""
    tasks = [make_task(clock, inputs={"n": n}) for n in range(count)]
    for task in tasks:
        stores.queue.enqueue([task])
    stores.queue.packs.close()
    return tasks


def _all_lost_in_a_reboot(stores: Stores, clock: FakeClock, count: int) -> list[NewTask]:
    """``count`` tasks enqueued as one batch by a writer that is gone, whose links a power loss
    took, in packs of an earlier boot."""
    tasks = [make_task(clock) for _ in range(count)]
    stores.queue.enqueue(tasks)
    stores.queue.packs.close()
    _lose_links(stores, {t.task_id for t in tasks})
    _written_in_another_boot(stores)
    return tasks


def test_a_batch_shares_packs_and_every_task_reads_as_its_own(
    stores: Stores, clock: FakeClock
) -> None:
    # Given a batch of 150 tasks
    tasks = [make_task(clock, inputs={"n": n}) for n in range(150)]
    stores.queue.enqueue(tasks)
    # Then they live in three packs, each task's name a link to one of them
    assert len(_pack_names(stores)) == 3
    inodes = {p.stat().st_ino for p in Path(stores.queue.pending_dir).rglob("*.json")}
    assert len(inodes) == 3
    # And each task is leased with its own record, and its result is its own
    ran = _drain(stores)
    assert sorted(ran) == sorted(t.task_id for t in tasks)
    for n, task in enumerate(tasks):
        info = stores.queue.find(task.task_id)
        assert info is not None and info.status is TaskStatus.SUCCEEDED
        assert info.record["input"] == {"n": n}
        assert info.record["result"] == {"ran": task.task_id}


def _linked_packs(stores: Stores) -> set[int]:
    """The inodes of the files that pending tasks are names of (their packs)."""
    return {p.stat().st_ino for p in Path(stores.queue.pending_dir).rglob("*.json")}


def _paths(dirs: DataDirs) -> list[str]:
    return [str(dirs.queue), str(dirs.idempotency), str(dirs.dlq)]


def _one_per_call_until(stores: Stores, clock: FakeClock, packs_linked: int, first: int = 0) -> int:
    """Enqueue one task per call (inputs ``{"n": first}``, then on) until pending tasks name
    ``packs_linked`` packs; how many."""
    count = 0
    while len(_linked_packs(stores)) < packs_linked:
        stores.queue.enqueue([make_task(clock, inputs={"n": first + count})])
        count += 1
    return count


def _fork_enqueuing(
    stores: Stores, tasks: list[NewTask], then: Callable[[], bool] | None = None
) -> int:
    """Fork a child that enqueues ``tasks`` one per call, then leaves without running the
    parent's teardown: exit status 0, or 2 when ``then()`` says False. Its pid."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            for task in tasks:
                stores.queue.enqueue([task])
            code = 0 if then is None or then() else 2
        finally:
            os._exit(code)
    return pid


def test_one_task_per_call_fills_a_pack_then_starts_another(
    stores: Stores, clock: FakeClock
) -> None:
    for _ in range(packs.PACK_TASKS + 1):
        stores.queue.enqueue([make_task(clock)])

    assert len(_linked_packs(stores)) == 2


def test_a_writer_that_fills_packs_one_task_per_call_has_its_next_pack_made_ahead(
    dirs: DataDirs, clock: FakeClock
) -> None:
    stores = open_stores(dirs, durable=True, clock=clock)
    # Given a writer that enqueued one task per call until it started its second pack
    count = _one_per_call_until(stores, clock, 1)
    [first] = _pack_names(stores)
    count += _one_per_call_until(stores, clock, 2, count)
    # Then its next pack is ready: named in packs/ with its journal, holding no record
    ahead = stores.queue.packs.next_pack()
    assert ahead is not None
    assert os.stat(ahead).st_ino not in _linked_packs(stores)
    assert packs.records(Path(ahead).read_bytes()) == []
    assert Path(packs.journal_path(ahead)).read_bytes() == Path(ahead).read_bytes()
    # And a checkpoint leaves it, as it does the pack in use (only the first, let go, goes)
    stores.queue.checkpoint()
    assert first not in _pack_names(stores)
    assert os.path.exists(ahead) and os.path.exists(packs.journal_path(ahead))
    # When the second pack is full, the next task goes into the pack made ahead
    count += _one_per_call_until(stores, clock, 3, count)
    assert os.stat(ahead).st_ino in _linked_packs(stores)
    # And letting the writer go removes the pack made ahead of that one, and its journal
    following = stores.queue.packs.next_pack()
    assert following is not None and following != ahead
    stores.queue.packs.close()
    assert not os.path.exists(following) and not os.path.exists(packs.journal_path(following))
    # And every task runs once, with its own record
    leases = []
    while (lease := stores.queue.lease("c", LEASE_S)) is not None:
        leases.append(lease.record["input"]["n"])
        stores.queue.ack(lease, {})
    assert sorted(leases) == list(range(count))


def test_closing_a_file_backend_removes_the_pack_made_ahead(
    dirs: DataDirs, clock: FakeClock
) -> None:
    # Given a backend whose queue was written one task per call until a pack was made ahead
    backend = open_backend(
        Location.for_file_dirs(*_paths(dirs)),
        durable=True,
        clock=clock,
        env={},
    )
    assert isinstance(backend, FileBackend)
    _one_per_call_until(backend.stores, clock, 2)
    ahead = backend.stores.queue.packs.next_pack()
    assert ahead is not None
    # When the backend is closed
    backend.close()
    # Then that pack and its journal are gone, and the tasks are all there
    assert not os.path.exists(ahead) and not os.path.exists(packs.journal_path(ahead))
    assert len(_linked_packs(backend.stores)) == 2


def test_a_batch_that_spans_packs_makes_none_ahead(dirs: DataDirs, clock: FakeClock) -> None:
    stores = open_stores(dirs, durable=True, clock=clock)
    stores.queue.enqueue([make_task(clock) for _ in range(3 * packs.PACK_TASKS)])
    stores.queue.enqueue([make_task(clock) for _ in range(3 * packs.PACK_TASKS)])

    assert stores.queue.packs.next_pack() is None
    named = {os.stat(_packs_dir(stores) / name).st_ino for name in _pack_names(stores)}
    assert named <= _linked_packs(stores)  # (every pack holds tasks)


def test_a_pack_that_could_not_be_made_ahead_is_made_when_needed(
    dirs: DataDirs, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a disk on which no helper thread can make a pack
    make = pack_writer.PackWriter._create

    def create(
        self: pack_writer.PackWriter, room_bytes: int, journals: JournalStock | None = None
    ) -> object:
        if threading.current_thread() is not threading.main_thread():
            raise OSError(errno.ENOSPC, "No space left on device")
        return make(self, room_bytes, journals)

    monkeypatch.setattr(pack_writer.PackWriter, "_create", create)
    stores = open_stores(dirs, durable=True, clock=clock)
    # When a writer fills three packs one task per call
    count = _one_per_call_until(stores, clock, 4)
    # Then none was made ahead, and every task was written and runs once
    assert stores.queue.packs.next_pack() is None
    assert len(_pack_names(stores)) == 4
    assert len(_drain(stores)) == count


NO_THREAD_WRITER = (
    """
import sys, time

from tracemind.backend.file.stores import open_stores_at
from tracemind.queue.names import new_task_id
from tracemind.queue.protocol import NewTask
"""
    + NO_THREAD_PRELUDE
    + """
stores = open_stores_at(*sys.argv[1:4], durable=True, clock=time.time)
for n in range(int(sys.argv[4])):
    task_id = new_task_id()
    stores.queue.enqueue([NewTask(task_id, {"task_id": task_id, "input": {"n": n}}, time.time())])
print("enqueued", n + 1)
"""
)


def test_a_writer_that_may_start_no_thread_makes_each_pack_when_needed(
    nobodys_data: Path,
) -> None:
    # Given a process of another user that may start no thread (RLIMIT_NPROC)
    data = nobodys_data
    dirs = DataDirs(data / "queue", data / "idempotency", data / "dlq")
    count = 3 * packs.PACK_TASKS
    # When it enqueues three packs' worth, one task per call
    done = subprocess.run(
        [*NOBODY, sys.executable, "-c", NO_THREAD_WRITER, *_paths(dirs), str(count)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # Then every call succeeded, each pack made when it was needed
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["no thread may start", f"enqueued {count}"]
    stores = open_stores(dirs, durable=True)
    assert stores.queue.stats().pending == count
    named = {os.stat(_packs_dir(stores) / name).st_ino for name in _pack_names(stores)}
    assert named == _linked_packs(stores)  # (none made ahead)


def test_a_child_forked_by_a_writer_never_takes_the_pack_made_ahead_for_it(
    dirs: DataDirs, clock: FakeClock
) -> None:
    # Given a writer with a pack made ahead
    stores = open_stores(dirs, durable=True, clock=clock)
    before = _one_per_call_until(stores, clock, 2)
    ahead = stores.queue.packs.next_pack()
    assert ahead is not None
    # When it forks a child that enqueues a pack's worth and more one per call, while it does
    # the same
    per_side = 2 * packs.PACK_TASKS
    child_tasks = [make_task(clock, inputs={"by": "child", "n": n}) for n in range(per_side)]
    pid = _fork_enqueuing(stores, child_tasks, lambda: stores.queue.packs.next_pack() != ahead)
    parent_tasks = [make_task(clock, inputs={"by": "parent", "n": n}) for n in range(per_side)]
    for task in parent_tasks:
        stores.queue.enqueue([task])
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # Then the child's tasks are names of the child's own packs, never of the parent's
    writer_of = {
        os.stat(_packs_dir(stores) / name).st_ino: name.split("-")[1]
        for name in _pack_names(stores)
    }
    child_ids = {t.task_id for t in child_tasks}
    for path in Path(stores.queue.pending_dir).rglob("*.json"):
        expected = str(pid) if path.name.split("_")[1] in child_ids else str(os.getpid())
        assert writer_of[path.stat().st_ino] == expected
    # And every task reads as its own record and runs once
    inputs = {}
    while (lease := stores.queue.lease("c", LEASE_S)) is not None:
        inputs[lease.task_id] = lease.record["input"]
        stores.queue.ack(lease, {})
    assert len(inputs) == before + 2 * per_side
    assert all(inputs[t.task_id] == t.record["input"] for t in child_tasks + parent_tasks)


def test_a_child_forked_by_a_writer_writes_packs_of_its_own(
    stores: Stores, clock: FakeClock
) -> None:
    # Given a writer with a pack open (it enqueued one task)
    parent = [make_task(clock, inputs={"by": "parent", "n": 0})]
    stores.queue.enqueue(parent)
    # When it forks a child that enqueues 50 tasks one per call, while it enqueues 50 more
    children = [make_task(clock, inputs={"by": "child", "n": n}) for n in range(50)]
    pid = _fork_enqueuing(stores, children)
    more = [make_task(clock, inputs={"by": "parent", "n": n}) for n in range(1, 51)]
    for task in more:
        stores.queue.enqueue([task])
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # Then every task reads as its own record (no write of one landed on the other's), the
    # child's in packs of its own, and each runs once
    tasks = {t.task_id: t.record["input"] for t in [*parent, *children, *more]}
    ran = {}
    while (lease := stores.queue.lease("c", LEASE_S)) is not None:
        ran[lease.task_id] = lease.record["input"]
        stores.queue.ack(lease, {})
    assert ran == tasks
    writers = {name.split("-")[1] for name in _pack_names(stores)}
    assert writers == {str(os.getpid()), str(pid)}


def test_a_retry_and_a_cancel_stay_with_their_task(stores: Stores, clock: FakeClock) -> None:
    # Given three tasks of one pack
    first, second, third = (make_task(clock, inputs={"n": n}) for n in range(3))
    stores.queue.enqueue([first, second, third])
    # When the first fails once, the second is cancelled, and then everything runs
    lease = stores.queue.lease("c", LEASE_S)
    assert lease is not None and lease.task_id == first.task_id
    stores.queue.retry(lease, Failure("boom"), 0.0)
    assert stores.queue.cancel(second.task_id) == "cancelled"
    ran = _drain(stores)
    # Then the first ran again with its failure on record, the third once, the second never
    assert ran == [third.task_id, first.task_id] or ran == [first.task_id, third.task_id]
    info = stores.queue.find(first.task_id)
    assert info is not None and info.status is TaskStatus.SUCCEEDED and info.attempts == 2
    cancelled = stores.queue.find(second.task_id)
    assert cancelled is not None and cancelled.status is TaskStatus.CANCELLED
    done = stores.queue.find(third.task_id)
    assert done is not None and done.record["result"] == {"ran": third.task_id}


def test_a_torn_record_in_a_pack_harms_only_its_own_task(stores: Stores, clock: FakeClock) -> None:
    tasks = [make_task(clock, inputs={"n": n}) for n in range(5)]
    stores.queue.enqueue(tasks)
    [path] = [p for p in Path(stores.queue.pending_dir).rglob(f"*_{tasks[2].task_id}_0.json")]
    damage_record(path, tasks[2].task_id, b'{"v":1,"ta')

    ran = _drain(stores)

    assert ran == [t.task_id for n, t in enumerate(tasks) if n != 2]
    assert stores.queue.stats().pending == 0


def test_a_live_writers_pack_is_never_retired(stores: Stores, clock: FakeClock) -> None:
    # Given a writer that still holds its pack (it may add to it)
    stores.queue.enqueue([make_task(clock)])
    # Then a checkpoint leaves the pack's name alone, however long it waited
    assert stores.queue.checkpoint() == 0
    assert len(_pack_names(stores)) == 1
    # And once the writer lets it go, the next checkpoint retires it
    stores.queue.packs.close()
    stores.queue.checkpoint()
    assert _pack_names(stores) == []


def _pack_files(stores: Stores) -> tuple[set[str], set[str]]:
    """(packs, journals) named in ``packs/``, by the pack's name."""
    names = os.listdir(_packs_dir(stores))
    pack_names = {n for n in names if n.endswith(packs.SUFFIX)}
    journals = {
        n.removesuffix(packs.JOURNAL_SUFFIX) + packs.SUFFIX
        for n in names
        if n.endswith(packs.JOURNAL_SUFFIX)
    }
    return pack_names, journals


def test_a_writer_retires_the_packs_it_filled_once_its_next_batch_synced_their_links(
    dirs: DataDirs, clock: FakeClock
) -> None:
    # Given a durable queue, and a writer whose batch of 150 filled two packs and began a third
    stores = open_stores(dirs, durable=True, clock=clock)
    first = [make_task(clock, inputs={"n": n}) for n in range(150)]
    stores.queue.enqueue(first)
    after_first, _ = _pack_files(stores)
    assert len(after_first) == 3
    # When its next batch, which spans packs, is made durable (one sync of the file system,
    # which makes every link made before it durable)
    second = [make_task(clock, inputs={"n": n}) for n in range(150, 300)]
    stores.queue.enqueue(second)
    # Then the writer retired the two packs the first batch filled, journals included, and
    # kept the one it went on writing into (it filled it in this call: its links are not synced)
    pack_names, journals = _pack_files(stores)
    assert len(after_first & pack_names) == 1
    assert len(pack_names) == 3 and journals == pack_names
    # And every task runs once, with its own record
    ran = _drain(stores)
    assert sorted(ran) == sorted(t.task_id for t in first + second)
    for n, task in enumerate(first + second):
        info = stores.queue.find(task.task_id)
        assert info is not None and info.record["input"] == {"n": n}


def test_a_writer_leaves_a_pack_with_keyed_records_to_the_checkpoint(
    dirs: DataDirs, clock: FakeClock, echo_snapshot: FlowSnapshot
) -> None:
    # Given a writer whose keyed batch filled packs (each key's record, a link to its task's
    # pack, is made after the batch's records)
    stores = open_stores(dirs, durable=True, clock=clock)
    submitter = stores.submitter(ttl_s=3600.0)
    submitter.submit_many(echo_snapshot, [Submission({"n": n}, f"k{n}") for n in range(150)])
    keyed, _ = _pack_files(stores)
    # When its next batch, without keys, is made durable
    stores.queue.enqueue([make_task(clock) for _ in range(150)])
    # Then the keyed batch's packs are all still named: the checkpoint retires them
    pack_names, _ = _pack_files(stores)
    assert keyed <= pack_names
    stores.queue.packs.close()
    stores.queue.checkpoint()
    assert _pack_names(stores) == []


def test_a_writer_keeps_a_bounded_list_of_packs_to_retire_and_leaves_the_rest_to_the_checkpoint(
    dirs: DataDirs, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a writer that keeps at most two filled packs to retire, and filled more than that
    # one task per call (a flush of its journal each, never a sync of the file system)
    monkeypatch.setattr(pack_writer, "RETIRE_MAX", 2)
    stores = open_stores(dirs, durable=True, clock=clock)
    for _ in range(3 * packs.PACK_TASKS + 1):
        stores.queue.enqueue([make_task(clock)])
    before, _ = _pack_files(stores)
    assert len(before) >= 4
    # When a batch that spans packs syncs the file system
    stores.queue.enqueue([make_task(clock) for _ in range(150)])
    # Then the writer retired only the two packs it kept; the checkpoint retires the others
    after, _ = _pack_files(stores)
    assert len(before - after) == 2
    stores.queue.packs.close()
    stores.queue.checkpoint()
    assert _pack_names(stores) == []


def test_after_a_reboot_exactly_the_lost_tasks_come_back(dirs: DataDirs, clock: FakeClock) -> None:
    # Given tasks in every state, all from one pack whose writer is gone
    stores = open_stores(dirs, durable=False, clock=clock)
    tasks = [make_task(clock, inputs={"n": n}, max_attempts=1) for n in range(10)]
    stores.queue.enqueue(tasks)
    stores.queue.packs.close()
    done = stores.queue.lease("c", LEASE_S)
    assert done is not None
    stores.queue.ack(done, {})
    dead = stores.queue.lease("c", LEASE_S)
    purged = stores.queue.lease("c", LEASE_S)
    requeued = stores.queue.lease("c", LEASE_S)
    inflight = stores.queue.lease("c", LEASE_S)
    assert dead and purged and requeued and inflight
    for lease in (dead, purged, requeued):
        stores.queue.dead_letter(lease, Failure("no"))
    assert stores.dlq.purge(purged.task_id)
    assert stores.queue.requeue(requeued.task_id)
    waiting = [t.task_id for t in tasks[5:]]
    # When a power loss took the links of three waiting tasks, and the machine rebooted
    lost = set(waiting[:3])
    _lose_links(stores, lost)
    _written_in_another_boot(stores)
    # Then the next checkpoint links exactly those three back, and retires the pack
    assert stores.queue.checkpoint() == 3
    assert _pack_names(stores) == []
    assert stores.queue.checkpoint() == 0
    ran = _drain(stores)
    assert sorted(ran) == sorted([*waiting, requeued.task_id])
    for task_id in (done.task_id, dead.task_id, purged.task_id):
        assert task_id not in ran


@pytest.mark.parametrize("durable", [True, False], ids=["durable", "not durable"])
@pytest.mark.parametrize("fails", ["while writing its records", "while linking its tasks"])
@pytest.mark.parametrize("error", ["a full disk", "an interrupt"])
def test_after_a_reboot_no_task_of_a_failed_enqueue_comes_back(
    dirs: DataDirs,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
    fails: str,
    durable: bool,
    error: str,
) -> None:
    # Given a batch of 100 that fails part-way (a full disk, or SIGINT's KeyboardInterrupt):
    # writing its 70th record into its pack, or on its 41st link, after every record was
    # written (and flushed, when durable)
    stores = open_stores(dirs, durable=durable, clock=clock)
    step, real = (
        ("write_at", pack_writer.write_at)
        if fails == "while writing its records"
        else ("_link", pack_writer._link)
    )
    calls: list[object] = []
    writes_per_record = 2 if durable else 1  # (its pack, then its journal)
    fail_at = writes_per_record * 69 + 1 if step == "write_at" else 41

    def failing(*args: object) -> None:
        calls.append(args)
        if len(calls) == fail_at and error == "a full disk":
            raise OSError(errno.ENOSPC, "No space left on device")
        if len(calls) == fail_at:
            raise KeyboardInterrupt
        real(*args)  # type: ignore[operator]

    monkeypatch.setattr(pack_writer, step, failing)
    tasks = [make_task(clock) for _ in range(100)]
    expected = QueueError if error == "a full disk" else KeyboardInterrupt
    with pytest.raises(expected):
        stores.queue.enqueue(tasks)
    monkeypatch.undo()
    stores.queue.packs.close()
    linked = [t.task_id for t in tasks[:40]] if step == "_link" else []
    # When the machine reboots before any checkpoint
    _written_in_another_boot(stores)
    # Then the checkpoint gives back no task the failed call left unlinked (its caller was told
    # it failed), and each task it linked runs once
    assert stores.queue.checkpoint() == 0
    assert sorted(_drain(stores)) == sorted(linked)


@pytest.mark.parametrize("fails", ["while writing its record", "while linking its task"])
@pytest.mark.parametrize("error", ["a full disk", "an interrupt"])
def test_after_a_reboot_no_task_of_a_failed_call_of_one_task_comes_back(
    dirs: DataDirs, clock: FakeClock, monkeypatch: pytest.MonkeyPatch, fails: str, error: str
) -> None:
    # Given a writer of many calls of one task each, past its first pack (its calls take the
    # short way: see PackWriter._add_one)
    stores = open_stores(dirs, durable=True, clock=clock)
    before = _one_per_call_until(stores, clock, 2)
    short_ways: list[str] = []
    real_add_one = pack_writer.PackWriter._add_one

    def add_one(self: pack_writer.PackWriter, *args: object) -> bool:
        try:
            taken = real_add_one(self, *args)  # type: ignore[arg-type]
        except BaseException:
            short_ways.append("raised")
            raise
        short_ways.append("taken" if taken else "not taken")
        return taken

    monkeypatch.setattr(pack_writer.PackWriter, "_add_one", add_one)
    stores.queue.enqueue([make_task(clock, inputs={"n": before})])
    # When its next call fails (a full disk, or SIGINT's KeyboardInterrupt): writing the
    # record into its journal, after the pack, or linking the task, after the flush
    step, real = (
        ("write_at", pack_writer.write_at)
        if fails == "while writing its record"
        else ("_link", pack_writer._link)
    )
    calls: list[object] = []

    def failing(*args: object) -> None:
        calls.append(args)
        if len(calls) == (2 if step == "write_at" else 1):
            if error == "a full disk":
                raise OSError(errno.ENOSPC, "No space left on device")
            raise KeyboardInterrupt
        real(*args)  # type: ignore[operator]

    monkeypatch.setattr(pack_writer, step, failing)
    with pytest.raises(QueueError if error == "a full disk" else KeyboardInterrupt):
        stores.queue.enqueue([make_task(clock, inputs={"n": -1})])
    monkeypatch.setattr(pack_writer, step, real)
    # Then the writer goes on: its next call writes into the same pack
    stores.queue.enqueue([make_task(clock, inputs={"n": before + 1})])
    assert short_ways == ["taken", "raised", "taken"]
    stores.queue.packs.close()
    # And after a reboot before any checkpoint, the checkpoint gives back no task of the
    # failed call (its caller was told it failed), and every other task runs once
    _written_in_another_boot(stores)
    assert stores.queue.checkpoint() == 0
    ran = []
    while (lease := stores.queue.lease("c", LEASE_S)) is not None:
        ran.append(lease.record["input"]["n"])
        stores.queue.ack(lease, {})
    assert sorted(ran) == list(range(before + 2))


def test_after_a_reboot_a_keyed_task_comes_back_only_if_its_key_points_at_it(
    dirs: DataDirs, clock: FakeClock, echo_snapshot: FlowSnapshot, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given three keyed submissions into one pack: "a" made whole, "b" rolled back when its
    # key could not be written (its caller got an error), "c" staged by a submitter that died
    # before it wrote the key
    stores = open_stores(dirs, durable=True, clock=clock)
    submitter = stores.submitter(ttl_s=3600.0)
    [a] = submitter.submit_many(echo_snapshot, [Submission({"n": 1}, "a")])
    with monkeypatch.context() as patched:
        patched.setattr(stores.keys, "link_many", _disk_full)
        with pytest.raises(QueueError):
            submitter.submit_many(echo_snapshot, [Submission({"n": 2}, "b")])
    c = make_task(clock, key="c")
    staged = staged_name(c.task_id, int(c.due_s * 1000), stores.keys.stripe("c"))
    stores.queue.stage([c], [staged], [stores.keys.digest("c")])
    stores.queue.packs.close()
    # When a power loss took the links of "a" and "c", and the machine rebooted
    _lose_links(stores, {a.task_id})
    (Path(stores.queue.root) / "staging" / staged).unlink()
    _written_in_another_boot(stores)
    # Then the checkpoint gives back "a" only: no key points at the other two, whose callers
    # were never told they exist
    assert stores.queue.checkpoint() == 1
    # And a retry of "b" and "c" makes each a task of its own, and each key's task runs once
    retried = submitter.submit_many(echo_snapshot, [Submission({"n": 2}, "b"), Submission({}, "c")])
    assert [r.duplicate for r in retried] == [False, False]
    assert sorted(_drain(stores)) == sorted([a.task_id, *(r.task_id for r in retried)])


def _disk_full(*args: object, **kwargs: object) -> None:
    raise QueueError("keys: No space left on device")


def test_a_checkpoint_settles_a_live_writers_records_so_no_replay_brings_them_back(
    stores: Stores, clock: FakeClock
) -> None:
    # Given two tasks of a live writer, settled by a checkpoint, then run, and their results
    # removed (as retention does)
    first = [make_task(clock) for _ in range(2)]
    stores.queue.enqueue(first)
    assert stores.queue.checkpoint() == 0 and len(_pack_names(stores)) == 1
    assert stores.queue.oldest_unsettled_ms() is None
    assert sorted(_drain(stores)) == sorted(t.task_id for t in first)
    for task in first:
        Path(stores.queue.done_path(task.task_id)).unlink()
    # and a third task of the same pack, not yet settled, whose link a power loss took
    late = make_task(clock)
    stores.queue.enqueue([late])
    assert stores.queue.oldest_unsettled_ms() == int(late.task_id[:12], 16)
    _lose_links(stores, {late.task_id})
    stores.queue.packs.close()
    _written_in_another_boot(stores)
    # When the machine comes back, Then only the unsettled task is linked back
    assert stores.queue.checkpoint() == 1
    assert _drain(stores) == [late.task_id]


def test_after_a_reboot_a_record_the_pack_lost_is_written_back_from_its_journal(
    dirs: DataDirs, clock: FakeClock
) -> None:
    # Given a durable queue: each pack has a journal, and only the journal is synced per call
    stores = open_stores(dirs, durable=True, clock=clock)
    tasks = _one_per_call_by_a_writer_now_gone(stores, clock, 3)
    [_] = [n for n in os.listdir(_packs_dir(stores)) if n.endswith(".journal")]
    # When a power loss took the second task's record from the pack (its name survived) and
    # the third task's name, and the machine rebooted
    [path] = Path(stores.queue.pending_dir).rglob(f"*_{tasks[1].task_id}_0.json")
    damage_record(path, tasks[1].task_id, b"\0\0\0")
    _lose_links(stores, {tasks[2].task_id})
    _written_in_another_boot(stores)
    # Then the checkpoint writes back both from the journal, and retires pack and journal
    assert stores.queue.checkpoint() == 2
    assert os.listdir(_packs_dir(stores)) == []
    ran = _drain(stores)
    assert sorted(ran) == sorted(t.task_id for t in tasks)
    for n, task in enumerate(tasks):
        info = stores.queue.find(task.task_id)
        assert info is not None and info.record["input"] == {"n": n}


def test_after_a_reboot_that_emptied_a_pack_its_journal_gives_every_task_back(
    dirs: DataDirs, clock: FakeClock
) -> None:
    # Given a durable queue's pack whose data never reached the disk (only its journal is
    # synced per call), and a power loss that took the pack's content and its links
    stores = open_stores(dirs, durable=True, clock=clock)
    tasks = _one_per_call_by_a_writer_now_gone(stores, clock, 3)
    _lose_links(stores, {t.task_id for t in tasks})
    _written_in_another_boot(stores)
    [pack] = _pack_names(stores)
    os.truncate(_packs_dir(stores) / pack, 0)
    # Then the checkpoint gives every task back from the journal
    assert stores.queue.checkpoint() == 3
    assert os.listdir(_packs_dir(stores)) == []
    assert sorted(_drain(stores)) == sorted(t.task_id for t in tasks)


def test_two_processes_replaying_at_once_bring_each_task_back_once(
    dirs: DataDirs, clock: FakeClock, tmp_path: Path
) -> None:
    # Given 100 tasks whose links a power loss took, in packs of an earlier boot
    stores = open_stores(dirs, durable=False, clock=clock)
    tasks = _all_lost_in_a_reboot(stores, clock, 100)
    # When two processes checkpoint at the same instant
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from tracemind.backend.file.stores import open_stores
        from tracemind.config import DataDirs
        stores = open_stores(DataDirs.of(*{_dirs(dirs)!r}), durable=False)
        go = Path({str(tmp_path / "go")!r})
        while not go.exists():
            time.sleep(0.001)
        print(stores.queue.checkpoint())
        """
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    (tmp_path / "go").touch()
    outputs = [p.communicate(timeout=60)[0] for p in procs]
    # Then every task is back exactly once
    assert sum(int(out) for out in outputs) == 100
    assert sorted(_drain(stores)) == sorted(t.task_id for t in tasks)


def test_a_paused_writer_keeps_its_pack(dirs: DataDirs, clock: FakeClock) -> None:
    # Given a writer process that enqueued and then stopped (SIGSTOP) holding its pack
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        from pathlib import Path
        from tracemind.backend.file.stores import open_stores
        from tracemind.config import DataDirs
        from tm_testing import FakeClock, make_task
        stores = open_stores(DataDirs.of(*{_dirs(dirs)!r}), durable=True)
        stores.queue.enqueue([make_task(FakeClock())])
        print("enqueued", flush=True)
        os.kill(os.getpid(), signal.SIGSTOP)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=env)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"enqueued\n"
        stores = open_stores(dirs, durable=True, clock=clock)
        wait_until(lambda: _stopped(proc.pid), 10, "the writer to stop")
        # Then no checkpoint retires its pack while it lives
        stores.queue.checkpoint()
        assert len(_pack_names(stores)) == 1
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    # And once it is gone, the pack is retired and its task still waits
    stores.queue.checkpoint()
    assert _pack_names(stores) == []
    assert stores.queue.stats().pending == 1


def _dirs(dirs: DataDirs) -> list[str]:
    return [str(dirs.queue), str(dirs.idempotency), str(dirs.dlq)]


def _stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as file:
        return file.read().rsplit(")", 1)[1].split()[0] == "T"


def test_retention_keeps_results_a_replay_could_bring_back(
    dirs: DataDirs, clock: FakeClock
) -> None:
    # Given a writer paused (SIGSTOP) in the middle of an enqueue: its record written, its
    # link not yet made
    from tracemind.backend.file.retention import Pruner
    from tracemind.backend.retention import RetentionPolicy

    script = textwrap.dedent(
        f"""
        import os, signal
        from tracemind.backend.file.stores import open_stores
        from tracemind.config import DataDirs
        from tm_testing import FakeClock, make_task
        real_link = os.link
        def pause_then_link(*args, **kwargs):
            print("writing", flush=True)
            os.kill(os.getpid(), signal.SIGSTOP)
            return real_link(*args, **kwargs)
        os.link = pause_then_link
        stores = open_stores(DataDirs.of(*{_dirs(dirs)!r}), durable=False)
        stores.queue.enqueue([make_task(FakeClock())])
        """
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    writer = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=env)
    try:
        assert writer.stdout is not None and writer.stdout.readline() == b"writing\n"
        wait_until(lambda: _stopped(writer.pid), 10, "the writer to stop")
        # and a task enqueued after it (here, by this process, whose own pack is idle) that
        # finished long ago
        clock.advance(1)
        stores = open_stores(dirs, durable=False, clock=clock)
        task = make_task(clock)
        stores.queue.enqueue([task])
        lease = stores.queue.lease("c", LEASE_S)
        assert lease is not None and lease.task_id == task.task_id
        stores.queue.ack(lease, {})
        done = Path(stores.queue.done_path(task.task_id))
        old_s = clock() - 30 * 86400
        os.utime(done, (old_s, old_s))
        pruner = Pruner(stores, RetentionPolicy.from_env({}))
        far_future_s = clock() + 30 * 86400
        # Then retention keeps its result while the paused writer's record may be replayed
        assert pruner.prune(now_s=far_future_s)["results"] == 0
        assert done.exists()
    finally:
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait(timeout=30)
    # And removes it once that writer is gone
    assert pruner.prune(now_s=far_future_s)["results"] == 1


@pytest.mark.parametrize("kind", ["fifo", "directory", "symlink", "garbage", "empty", "huge"])
def test_an_entry_of_packs_that_is_no_pack_is_moved_aside_and_holds_nothing_back(
    stores: Stores, clock: FakeClock, kind: str
) -> None:
    # Given a task, and an entry in packs/ that no writer made
    stores.queue.enqueue([make_task(clock)])
    stores.queue.packs.close()
    stores.queue.checkpoint()
    junk = _packs_dir(stores) / "0000000000001-1-junk.pack"
    if kind == "fifo":
        os.mkfifo(junk)
    elif kind == "directory":
        junk.mkdir()
    elif kind == "symlink":
        junk.symlink_to("/dev/zero")
    elif kind == "garbage":
        junk.write_bytes(b"R 0123 - {}\n")
    elif kind == "empty":
        junk.write_bytes(b"")
    else:
        with open(junk, "wb") as file:
            file.truncate(64 * 1024 * 1024 + 1)  # sparse: bigger than any record may be
    # Then it never counts as the oldest record, and a checkpoint moves it aside, never blocking
    assert stores.queue.oldest_unsettled_ms() is None
    stores.queue.checkpoint()
    assert _pack_names(stores) == []
    assert any(Path(stores.queue.root, "quarantine").iterdir())
    assert _drain(stores) != []


def test_a_checkpoint_retires_many_packs_with_few_descriptors(
    dirs: DataDirs, clock: FakeClock
) -> None:
    # Given 300 packs of writers that are gone (one task each)
    stores = open_stores(dirs, durable=True, clock=clock)
    for _ in range(300):
        stores.queue.enqueue([make_task(clock)])
        stores.queue.packs.close()
    assert len(_pack_names(stores)) == 300
    # When a process allowed 64 open files checkpoints
    script = textwrap.dedent(
        f"""
        import resource
        from tracemind.backend.file.stores import open_stores
        from tracemind.config import DataDirs
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        stores = open_stores(DataDirs.of(*{_dirs(dirs)!r}), durable=True)
        stores.queue.checkpoint(limit=200)
        stores.queue.checkpoint()
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    # Then it retired them all, a bounded number at a time, and every task still waits
    assert done.returncode == 0, done.stderr
    assert os.listdir(_packs_dir(stores)) == []
    assert stores.queue.stats().pending == 300


@pytest.mark.parametrize("how", ["SIGKILL", "SIGSTOP", "SIGKILL again"])
def test_a_replay_interrupted_part_way_is_finished_by_a_later_checkpoint_once_per_task(
    dirs: DataDirs, clock: FakeClock, how: str
) -> None:
    # Given 40 tasks whose links a power loss took, in a pack of an earlier boot
    import random

    stores = open_stores(dirs, durable=True, clock=clock)
    tasks = _all_lost_in_a_reboot(stores, clock, 40)
    # When a process replaying them is killed, or paused, after a random number of them
    stop_after, sig = random.randint(1, 39), how.split()[0]
    script = textwrap.dedent(
        f"""
        import os, signal
        from tracemind.backend.file.queue import FileQueue
        from tracemind.backend.file.stores import open_stores
        from tracemind.config import DataDirs
        real_replay, done = FileQueue._replay, []
        def replay_then_stop(self, task_id, record):
            written = real_replay(self, task_id, record)
            done.append(written)
            if len(done) == {stop_after}:
                print("stopping", flush=True)
                os.kill(os.getpid(), signal.{sig})
            return written
        FileQueue._replay = replay_then_stop
        open_stores(DataDirs.of(*{_dirs(dirs)!r}), durable=True).queue.checkpoint()
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"stopping\n"
        if sig == "SIGSTOP":
            wait_until(lambda: _stopped(proc.pid), 10, "the replaying process to stop")
            # (a paused replayer holds the pack: nobody else replays it meanwhile)
            assert stores.queue.checkpoint() == 0 and len(_pack_names(stores)) == 1
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    # Then a later checkpoint gives back exactly the rest, and each task runs once
    assert stores.queue.checkpoint() == 40 - stop_after
    assert _pack_names(stores) == []
    assert sorted(_drain(stores)) == sorted(t.task_id for t in tasks)


def test_a_writer_of_many_calls_keeps_its_writing_lock_between_calls_and_lets_it_go_idle(
    stores: Stores, dirs: DataDirs, clock: FakeClock
) -> None:
    # Given a writer that has made more than a pack's worth of one-task calls, and another
    # process's stores (their own writer) over the same queue
    for _ in range(packs.PACK_TASKS + 5):
        stores.queue.enqueue([make_task(clock)])
    other = open_stores(dirs, durable=False, clock=clock)
    # When the other checkpoints right after one more call of the writer
    # Then the pack being written into is not settled: its writing lock is kept, as during a
    # call
    assert _unsettled_right_after_a_call(stores, other, clock)

    # And once the writer has made no call for a moment, a checkpoint settles it
    def settled() -> bool:
        other.queue.checkpoint()
        return other.queue.oldest_unsettled_ms() is None

    wait_until(settled, 10 + pack_writer.WRITING_HELD_S, "the kept writing lock to go")
    # And the writer's next call takes it again, which its own process's checkpoint lets go
    assert _unsettled_right_after_a_call(stores, other, clock)
    stores.queue.checkpoint()
    assert other.queue.oldest_unsettled_ms() is None


def _unsettled_right_after_a_call(stores: Stores, other: Stores, clock: FakeClock) -> bool:
    """Whether ``other``'s checkpoint, run right after one more call of ``stores``' writer,
    left its pack unsettled: tried until the checkpoint ran within half the time the writer
    keeps its lock after a call (a host that stalls longer would let it go meanwhile)."""
    for _ in range(5):
        stores.queue.enqueue([make_task(clock)])
        called_s = time.monotonic()
        other.queue.checkpoint()
        unsettled = other.queue.oldest_unsettled_ms() is not None
        if time.monotonic() - called_s < pack_writer.WRITING_HELD_S / 2:
            return unsettled
    pytest.fail("no checkpoint came within half a hold of the call before it: the host stalls")
