"""Idempotency keys: which submissions are duplicates, across states, TTLs and processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tm_testing import FakeClock, Processes, Tm, damage_record, wait_until
from tracemind.backend.file.keys import IdempotencyStore
from tracemind.backend.file.stores import Stores, open_stores
from tracemind.config import DataDirs, idempotency_ttl_s
from tracemind.errors import LockTimeout, QueueError, UsageError
from tracemind.flows import FlowSnapshot
from tracemind.queue.names import staged_name
from tracemind.queue.protocol import Failure, NewTask, TaskStatus
from tracemind.submit import QueueSubmitter, Submission

TTL_S = 3600.0
LEASE_S = 30.0


def _status(stores: Stores, task_id: str) -> TaskStatus | None:
    info = stores.queue.find(task_id)
    return None if info is None else info.status


def test_a_duplicate_of_a_pending_task_returns_its_id_and_enqueues_nothing(
    stores: Stores, echo_snapshot: FlowSnapshot
) -> None:
    submitter = stores.submitter(TTL_S)
    first = submitter.submit(echo_snapshot, {"n": 1}, idempotency_key="order-1")

    again = submitter.submit(echo_snapshot, {"n": 2}, idempotency_key="order-1")

    assert first.duplicate is False
    assert (again.task_id, again.duplicate) == (first.task_id, True)
    assert stores.queue.stats().pending == 1


@pytest.mark.parametrize("state", ["inflight", "delayed"])
def test_a_duplicate_of_a_running_or_retrying_task_is_refused(
    stores: Stores, echo_snapshot: FlowSnapshot, state: str
) -> None:
    submitter = stores.submitter(TTL_S)
    first = submitter.submit(echo_snapshot, {}, idempotency_key="k")
    lease = stores.queue.lease("c1", LEASE_S)
    assert lease is not None
    if state == "delayed":
        stores.queue.retry(lease, Failure("boom"), 60.0)
    assert _status(stores, first.task_id) == state

    again = submitter.submit(echo_snapshot, {}, idempotency_key="k")

    assert (again.task_id, again.duplicate) == (first.task_id, True)
    assert stores.queue.stats().pending == 0


def test_a_succeeded_task_blocks_its_key_until_the_ttl_after_completion(
    stores: Stores, clock: FakeClock, echo_snapshot: FlowSnapshot
) -> None:
    # Given a task that succeeded 10 minutes after it was submitted
    submitter = stores.submitter(TTL_S)
    first = submitter.submit(echo_snapshot, {}, idempotency_key="k")
    clock.advance(600)
    lease = stores.queue.lease("c1", LEASE_S)
    assert lease is not None
    stores.queue.ack(lease, {"done": True})
    # When the same key comes back just before the TTL (counted from completion) ends
    clock.advance(TTL_S - 1)
    within = submitter.submit(echo_snapshot, {}, idempotency_key="k")
    # Then it is a duplicate; just after, it is a new task
    assert (within.task_id, within.duplicate) == (first.task_id, True)
    clock.advance(2)
    after = submitter.submit(echo_snapshot, {}, idempotency_key="k")
    assert after.duplicate is False and after.task_id != first.task_id
    assert _status(stores, after.task_id) is TaskStatus.PENDING


def test_a_zero_ttl_from_the_environment_lets_a_key_in_right_after_success(
    stores: Stores, echo_snapshot: FlowSnapshot
) -> None:
    ttl_s = idempotency_ttl_s({"TM_IDEMPOTENCY_TTL_S": "0"})
    submitter = stores.submitter(ttl_s)
    first = submitter.submit(echo_snapshot, {}, idempotency_key="k")
    lease = stores.queue.lease("c1", LEASE_S)
    assert lease is not None
    stores.queue.ack(lease, {})

    again = submitter.submit(echo_snapshot, {}, idempotency_key="k")

    assert ttl_s == 0
    assert again.duplicate is False and again.task_id != first.task_id


@pytest.mark.parametrize("raw", ["-1", "soon"])
def test_an_invalid_ttl_is_a_usage_error(raw: str) -> None:
    with pytest.raises(UsageError, match="TM_IDEMPOTENCY_TTL_S"):
        idempotency_ttl_s({"TM_IDEMPOTENCY_TTL_S": raw})


def _dead_then_submitted_again(stores: Stores, snapshot: FlowSnapshot) -> tuple[Any, Any]:
    """(the result of a keyed submission whose task then died, that of the same key again)."""
    submitter = stores.submitter(TTL_S)
    first = submitter.submit(snapshot, {}, idempotency_key="k")
    lease = stores.queue.lease("c1", LEASE_S)
    assert lease is not None
    stores.queue.dead_letter(lease, Failure("boom"))
    return first, submitter.submit(snapshot, {}, idempotency_key="k")


def test_the_key_of_a_dead_task_does_not_block_a_new_submission(
    stores: Stores, echo_snapshot: FlowSnapshot
) -> None:
    first, again = _dead_then_submitted_again(stores, echo_snapshot)

    assert again.duplicate is False and again.task_id != first.task_id
    assert _status(stores, first.task_id) is TaskStatus.DEAD
    assert _status(stores, again.task_id) is TaskStatus.PENDING


class _Crash(BaseException):
    """Stands for a SIGKILL: not an Exception, so nothing on the way rolls back."""


def _crash_after(monkeypatch: pytest.MonkeyPatch, target: object, name: str) -> None:
    """Make ``target.name`` do its work and then die like a killed process would."""
    real = getattr(target, name)

    def run_then_die(*args: Any, **kwargs: Any) -> Any:
        real(*args, **kwargs)
        raise _Crash

    monkeypatch.setattr(target, name, run_then_die)


def _submit_crashing(submitter: QueueSubmitter, echo_snapshot: FlowSnapshot) -> None:
    """A keyed batch of three whose process 'dies' (the rollback must not run on a kill, so
    the crash is raised past it: a BaseException that we then treat as the process's end)."""
    items = [Submission({"n": n}, f"k{n}") for n in range(3)]
    with pytest.raises(_Crash):
        submitter.submit_many(echo_snapshot, items)


def _drain(stores: Stores) -> list[tuple[str, str]]:
    """Run every task the queue gives (acking it); (key, task id) of each, in order."""
    ran = []
    while (lease := stores.queue.lease("c", LEASE_S)) is not None:
        stores.queue.ack(lease, {})
        ran.append((lease.record["idempotency_key"], lease.task_id))
    return ran


@pytest.mark.parametrize("dies_after", ["enqueue_keyed", "link_many", "ring"])
def test_a_retry_after_a_crash_inside_a_keyed_batch_ends_with_exactly_one_task_per_key(
    stores: Stores,
    echo_snapshot: FlowSnapshot,
    monkeypatch: pytest.MonkeyPatch,
    dies_after: str,
) -> None:
    # Given a keyed batch whose process dies right after one of its steps, and whose
    # rollback never runs (a killed process runs no handler)
    submitter = stores.submitter(TTL_S)
    target = stores.keys if dies_after == "link_many" else stores.queue
    _crash_after(monkeypatch, target, dies_after)
    monkeypatch.setattr(stores.queue, "withdraw", lambda paths: None)
    _submit_crashing(submitter, echo_snapshot)
    monkeypatch.undo()
    first_ids = [name.task_id for name in stores.queue.waiting.entries()]
    assert len(first_ids) == 3
    # When the client retries the same batch
    retry = submitter.submit_many(echo_snapshot, [Submission({"n": n}, f"k{n}") for n in range(3)])
    # Then every key names a task that exists, and the retry reports a duplicate exactly when
    # the first attempt's key records survived
    assert {r.duplicate for r in retry} == {dies_after != "enqueue_keyed"}
    for n, result in enumerate(retry):
        info = stores.queue.find(result.task_id)
        assert info is not None and info.status is TaskStatus.PENDING
        assert info.record["input"] == {"n": n}
        key = stores.keys.get(f"k{n}")
        assert key is not None and key.task_id == result.task_id
    # and each key's task runs exactly once: a task written before its key record (its
    # submitter killed in between) is removed by the consumer that finds it, never run
    ran = _drain(stores)
    assert sorted(ran) == sorted((f"k{n}", r.task_id) for n, r in enumerate(retry))
    assert stores.queue.stats().pending == 0
    if dies_after == "enqueue_keyed":
        assert all(stores.queue.find(task_id) is None for task_id in first_ids)


def test_a_batch_whose_key_records_fail_part_way_keeps_the_keys_of_what_it_wrote(
    stores: Stores, echo_snapshot: FlowSnapshot, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a keyed batch of three whose key records fail (a full disk) after the first
    from tracemind.backend.file import keys as keys_module

    submitter = stores.submitter(TTL_S)
    real_link_many = keys_module.link_many

    def fails_after_one(items: Any, **kwargs: Any) -> None:
        real_link_many(list(items)[:1], **kwargs)
        raise QueueError("keys: No space left on device")

    monkeypatch.setattr(keys_module, "link_many", fails_after_one)
    items = [Submission({"n": n}, f"k{n}") for n in range(3)]
    with pytest.raises(QueueError):
        submitter.submit_many(echo_snapshot, items)
    monkeypatch.undo()
    # (the two tasks without a key record were withdrawn)
    assert stores.queue.stats().pending == 1
    # When the caller, told it failed, submits the batch again
    retry = submitter.submit_many(echo_snapshot, items)
    # Then the task whose key was written is reported as a duplicate, the other two are new,
    # and each key's task runs exactly once
    assert [r.duplicate for r in retry] == [True, False, False]
    assert sorted(key for key, _ in _drain(stores)) == ["k0", "k1", "k2"]


def test_settling_publishes_what_an_earlier_version_staged_and_removes_its_orphans(
    stores: Stores, clock: FakeClock, echo_snapshot: FlowSnapshot
) -> None:
    # Given keyed tasks an earlier version's submitters left in staging/ when they died: three
    # whose keys they had written, and one whose key they had not
    tasks = [_new_task(clock, echo_snapshot, key) for key in ("k0", "k1", "k2", "orphan")]
    names = [
        staged_name(t.task_id, int(t.due_s * 1000), stores.keys.stripe(key))
        for t, key in zip(tasks, ("k0", "k1", "k2", "orphan"), strict=True)
    ]
    stores.queue.stage(
        tasks, names, [stores.keys.digest(t.record["idempotency_key"]) for t in tasks]
    )
    stores.keys.link_many(
        (t.record["idempotency_key"], stores.queue.staged_path(name))
        for t, name in zip(tasks[:3], names[:3], strict=True)
    )
    assert len(stores.queue.staged()) == 4 and stores.queue.stats().pending == 0
    # When the daemon settles staged tasks
    assert stores.settle_staged() == 4
    # Then the keyed ones are pending, the orphan is gone, and nothing is left staged
    assert stores.queue.staged() == []
    assert stores.queue.stats().pending == 3
    for task in tasks[:3]:
        assert _status(stores, task.task_id) is TaskStatus.PENDING
    assert stores.keys.get("orphan") is None
    assert sorted(key for key, _ in _drain(stores)) == ["k0", "k1", "k2"]


@pytest.mark.parametrize("written", ["whole", "half"])
def test_settling_leaves_a_task_whose_submitter_still_holds_its_key(
    stores: Stores,
    clock: FakeClock,
    echo_snapshot: FlowSnapshot,
    dirs: DataDirs,
    logs: list[dict[str, Any]],
    written: str,
) -> None:
    # Given a task staged (by an earlier version) under a key whose lock a live process holds,
    # its record whole or torn (damaged)
    task = _new_task(clock, echo_snapshot, "busy")
    name = staged_name(task.task_id, int(task.due_s * 1000), stores.keys.stripe("busy"))
    stores.queue.stage([task], [name], [stores.keys.digest("busy")])
    staged = Path(stores.queue.root) / "staging" / name
    if written == "half":
        damage_record(staged, task.task_id, b'{"v": 1, "task_id": "01a3')
    holder = _hold_key_lock(dirs, "busy")
    try:
        # When settling runs, Then it leaves the task to its submitter
        assert stores.settle_staged() == 0
        assert stores.queue.is_staged(name)
    finally:
        holder.kill()
        holder.wait(timeout=10)
    # and once that submitter is gone (it never wrote the key), the task is removed, torn or
    # not, without being taken for damage
    assert stores.settle_staged() == 1
    assert stores.queue.staged() == []
    assert not (Path(stores.queue.root) / "quarantine").exists()
    assert not any("quarantined" in e["event"] for e in logs)


def _hold_key_lock(dirs: DataDirs, key: str) -> subprocess.Popen[str]:
    """A live process holding ``key``'s lock (until it is killed)."""
    script = (
        "import sys; from tracemind.backend.file.keys import IdempotencyStore; "
        "s = IdempotencyStore(sys.argv[1], durable=False)\n"
        "with s.locked(sys.argv[2]):\n    print('locked', flush=True); sys.stdin.read()"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", script, str(dirs.idempotency), key],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    return holder


@pytest.mark.parametrize("submitter_then", ["writes the key", "dies"])
def test_a_consumer_leaves_a_new_keyed_task_alone_until_its_key_names_it(
    stores: Stores,
    clock: FakeClock,
    echo_snapshot: FlowSnapshot,
    dirs: DataDirs,
    logs: list[dict[str, Any]],
    submitter_then: str,
) -> None:
    # Given a keyed task written into pending/ by a submitter that holds its key's lock and
    # has not written the key record yet
    task = _new_task(clock, echo_snapshot, "busy")
    holder = _hold_key_lock(dirs, "busy")
    try:
        stores.queue.enqueue_keyed([task], [stores.keys.digest("busy")])
        [path] = stores.queue.keyed_paths([task])
        # When a consumer looks, however often, Then it leaves the task where it is
        for _ in range(3):
            assert stores.queue.lease("c", LEASE_S) is None
            clock.advance(1.0)
        assert _status(stores, task.task_id) is TaskStatus.PENDING
        if submitter_then == "writes the key":
            stores.keys.link_many([("busy", path)])
    finally:
        holder.kill()
        holder.wait(timeout=10)
    clock.advance(1.0)
    ran = _drain(stores)
    if submitter_then == "writes the key":
        # and runs it once its key names it
        assert ran == [("busy", task.task_id)]
    else:
        # and removes it once its submitter died without writing the key: never run
        assert ran == [] and stores.queue.find(task.task_id) is None
        assert any(
            e["event"] == "discarded keyed task whose submission never finished" for e in logs
        )


def test_a_requeued_dead_task_runs_even_after_its_key_went_to_a_new_task(
    stores: Stores, echo_snapshot: FlowSnapshot
) -> None:
    # Given a keyed task that died, a new task under its key, and the dead one requeued
    first, again = _dead_then_submitted_again(stores, echo_snapshot)
    assert stores.queue.requeue(first.task_id)
    # When the queue is drained, Then both run: the requeued one was asked for by hand
    assert sorted(task_id for _, task_id in _drain(stores)) == sorted(
        [first.task_id, again.task_id]
    )


def test_a_task_torn_in_its_pack_by_a_killed_submitter_is_never_named_and_the_retry_makes_one(
    stores: Stores, echo_snapshot: FlowSnapshot, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a keyed batch of three killed while writing its third record into its pack
    from tracemind.backend.file import pack_writer

    real_write_at = pack_writer.write_at
    records_written = []

    def die_in_third(fd: int, data: bytes, offset: int) -> None:
        if data.startswith(b"\nR "):
            records_written.append(data)
            if len(records_written) == 3:
                real_write_at(fd, data[: len(data) // 2], offset)
                raise _Crash
        real_write_at(fd, data, offset)

    submitter = stores.submitter(TTL_S)
    monkeypatch.setattr(pack_writer, "write_at", die_in_third)
    monkeypatch.setattr(stores.queue, "withdraw", lambda paths: None)  # (no rollback on a kill)
    _submit_crashing(submitter, echo_snapshot)
    monkeypatch.undo()
    # (names are linked only once every record is whole: nothing was linked)
    assert stores.queue.stats().pending == 0 and stores.keys.get("k2") is None
    # When the client retries
    retry = submitter.submit_many(echo_snapshot, [Submission({"n": n}, f"k{n}") for n in range(3)])
    # Then the retry made one task per key, and the torn record harms nothing
    assert [r.duplicate for r in retry] == [False] * 3
    assert stores.queue.stats().pending == 3
    assert not (Path(stores.queue.root) / "quarantine").exists()
    for n, result in enumerate(retry):
        key = stores.keys.get(f"k{n}")
        assert key is not None and key.task_id == result.task_id
    assert sorted(key for key, _ in _drain(stores)) == ["k0", "k1", "k2"]


def test_a_keyed_task_costs_two_links_and_no_rename_and_no_file(
    stores: Stores, echo_snapshot: FlowSnapshot, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given counters on file creations, symlinks and renames
    import os

    stores.queue.prepare()
    stores.queue.keep_census()  # (kept by writers every few seconds, not per task)
    calls = {"create": 0, "link": 0, "rename": 0}
    real_open, real_link, real_rename = os.open, os.link, os.rename

    def counted_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        calls["create"] += bool(flags & os.O_CREAT) and Path(path).name != ".bell"
        return real_open(path, flags, *args, **kwargs)

    def counted(name: str, real: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            done = real(*args, **kwargs)  # (counted once made: a call may fail on a bucket
            calls[name] += 1  # not made yet, which is then made and the call made again)
            return done

        return call

    monkeypatch.setattr(os, "open", counted_open)
    monkeypatch.setattr(os, "link", counted("link", real_link))
    monkeypatch.setattr(os, "rename", counted("rename", real_rename))
    # When a batch of 100 new keys is submitted
    items = [Submission({"n": n}, f"key-{n}") for n in range(100)]
    results = stores.submitter(TTL_S).submit_many(echo_snapshot, items)
    monkeypatch.undo()
    # Then the records went into two packs (64 tasks at most each, each created once and renamed
    # into packs/), and each task's name in pending/ and its key record are links to its pack
    # (lock files aside)
    assert not any(r.duplicate for r in results) and stores.queue.stats().pending == 100
    lock_files = len(list((stores.dirs.idempotency / "locks").iterdir()))
    assert calls["create"] - lock_files == 2
    assert (calls["link"], calls["rename"]) == (200, 2)


def _new_task(clock: FakeClock, snapshot: FlowSnapshot, key: str) -> NewTask:
    from tracemind.queue.names import new_task_id
    from tracemind.queue.records import new_record

    task_id = new_task_id(clock())
    record = new_record(
        task_id=task_id,
        flow=snapshot.to_dict(),
        inputs={},
        max_attempts=1,
        enqueued_at=clock(),
        idempotency_key=key,
    )
    return NewTask(task_id, record, clock())


def test_a_key_is_decided_without_listing_the_queue(
    stores: Stores, echo_snapshot: FlowSnapshot, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a key whose task is pending
    submitter = stores.submitter(TTL_S)
    first = submitter.submit(echo_snapshot, {}, idempotency_key="k")

    # When it is submitted again, no directory of the queue is listed
    def no_listing(*args: Any) -> Any:
        raise AssertionError("a duplicate-key check listed a directory")

    for module in ("queue_reads", "queue_writes"):
        monkeypatch.setattr(f"tracemind.backend.file.{module}.scan_names", no_listing)
    again = submitter.submit(echo_snapshot, {}, idempotency_key="k")

    assert (again.task_id, again.duplicate) == (first.task_id, True)


def test_duplicates_within_one_batch_resolve_to_the_first(
    stores: Stores, echo_snapshot: FlowSnapshot
) -> None:
    submitter = stores.submitter(TTL_S)
    items = [Submission({"n": n}, key) for n, key in enumerate(["a", "b", "a", None, "a", None])]

    results = submitter.submit_many(echo_snapshot, items)

    a_id, b_id = results[0].task_id, results[1].task_id
    assert [r.duplicate for r in results] == [False, False, True, False, True, False]
    assert results[2].task_id == results[4].task_id == a_id
    assert len({a_id, b_id, results[3].task_id, results[5].task_id}) == 4
    assert stores.queue.stats().pending == 4


@pytest.mark.parametrize("damage", ["torn record of an earlier version", "symlink"])
def test_a_damaged_key_record_blocks_nothing_and_is_moved_aside_with_a_log_line(
    stores: Stores, echo_snapshot: FlowSnapshot, logs: list[dict[str, Any]], damage: str
) -> None:
    # Given a key record that was damaged: a truncated record of the form earlier versions
    # wrote, or a symlink where the record (a second name of the task's file) was
    submitter = stores.submitter(TTL_S)
    first = submitter.submit(echo_snapshot, {}, idempotency_key="k")
    [record] = (stores.dirs.idempotency / "keys").iterdir()
    assert record.stat().st_nlink == 3  # the task's pack, also named in pending/ and packs/
    record.unlink()
    if damage.startswith("torn"):
        record.write_bytes(b'{"key": "k", "task_')
    else:
        record.symlink_to(next(Path(stores.queue.root, "pending").glob("*/*/*.json")))
    # When the key is submitted again
    again = submitter.submit(echo_snapshot, {}, idempotency_key="k")
    # Then it is accepted as a new task, the damaged record was quarantined and logged,
    # and the key now points at the new task
    assert again.duplicate is False and again.task_id != first.task_id
    assert any(e.get("path") == str(record) and "quarantined" in e["event"] for e in logs)
    assert list((stores.dirs.idempotency / "quarantine").iterdir())
    key = stores.keys.get("k")
    assert key is not None and key.task_id == again.task_id


def test_a_failed_enqueue_releases_the_key_it_claimed(
    dirs: DataDirs, clock: FakeClock, echo_snapshot: FlowSnapshot, tmp_path: Path
) -> None:
    # Given a queue directory that cannot be created (a regular file is in its way)
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    broken = DataDirs(blocker / "queue", dirs.idempotency, dirs.dlq)
    stores = open_stores(broken, durable=False, clock=clock)
    # When a submission with a key fails to enqueue
    with pytest.raises(QueueError, match="not a directory"):
        stores.submitter(TTL_S).submit(echo_snapshot, {}, idempotency_key="k")
    # Then the key does not point at the task that was never enqueued
    assert stores.keys.get("k") is None
    working = open_stores(dirs, durable=False, clock=clock).submitter(TTL_S)
    assert working.submit(echo_snapshot, {}, idempotency_key="k").duplicate is False


def test_a_lock_held_elsewhere_times_out_with_a_clear_error(dirs: DataDirs) -> None:
    waiter = IdempotencyStore(dirs.idempotency, durable=False, lock_timeout_s=0.2)
    script = (
        "import sys, time; from pathlib import Path; "
        "from tracemind.backend.file.keys import IdempotencyStore; "
        "s = IdempotencyStore(Path(sys.argv[1]), durable=False)\n"
        "with s.locked('k'):\n    print('locked', flush=True); time.sleep(30)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(dirs.idempotency)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        with pytest.raises(LockTimeout, match=r"not acquired within 0\.2 s"), waiter.locked("k"):
            pass
    finally:
        proc.kill()
        proc.wait(timeout=10)


@pytest.mark.slow
def test_racing_submissions_from_many_processes_create_exactly_one_task(
    tm: Tm, processes: Processes, flows: Any, tmp_path: Path, dirs: DataDirs
) -> None:
    # Given 8 processes ready to submit the same key at the same instant
    flow = flows.write("race", "tracemind.steps.echo")
    go = tmp_path / "go"
    outs = [tmp_path / f"out-{n}.txt" for n in range(8)]
    procs = [
        processes.start(
            [sys.executable, "-m", "tm_test_producer", str(flow), "3", str(out), str(go), "race"],
            env=tm.env,
            cwd=tmp_path,
        )
        for out in outs
    ]
    # When they all start together
    for out in outs:
        wait_until(out.with_suffix(".ready").exists, 30, f"{out.name} ready")
    go.touch()
    for proc in procs:
        assert proc.wait(timeout=60) == 0
    # Then exactly one submission created a task and every other one got its id
    rows = [line.split() for out in outs for line in out.read_text().splitlines()]
    assert len(rows) == 24
    created = [task_id for task_id, duplicate in rows if duplicate == "0"]
    assert len(created) == 1
    assert {task_id for task_id, _ in rows} == set(created)
    stores = open_stores(dirs, durable=False)
    assert stores.queue.stats().pending == 1


def test_tm_enqueue_reports_a_duplicate_as_json(tm: Tm, flows: Any) -> None:
    flow = flows.write("dup", "tracemind.steps.echo")
    first = tm.json("enqueue", flow, "-i", "{}", "--idempotency-key", "k", "--json")
    again = tm.json("enqueue", flow, "-i", "{}", "--idempotency-key", "k", "--json")
    text = tm("enqueue", flow, "--idempotency-key", "k")

    assert first == {"task_id": first["task_id"], "duplicate": False}
    assert again == {"task_id": first["task_id"], "duplicate": True}
    assert text.stdout.strip() == f"{first['task_id']} (duplicate)"


def test_tm_enqueue_honours_the_idempotency_ttl_from_the_environment(
    tm: Tm, flows: Any, dirs: DataDirs
) -> None:
    # Given a keyed task that has succeeded
    flow = flows.write("ttl", "tracemind.steps.echo")
    first = tm.json("enqueue", flow, "--idempotency-key", "k", "--json")["task_id"]
    stores = open_stores(dirs, durable=False)
    lease = stores.queue.lease("c1", LEASE_S)
    assert lease is not None and lease.task_id == first
    stores.queue.ack(lease, {})
    # Then within the default TTL it is a duplicate, and with TM_IDEMPOTENCY_TTL_S=0 it is not
    again = tm.json("enqueue", flow, "--idempotency-key", "k", "--json")
    assert again == {"task_id": first, "duplicate": True}
    fresh = tm.json(
        "enqueue", flow, "--idempotency-key", "k", "--json", env={"TM_IDEMPOTENCY_TTL_S": "0"}
    )
    assert fresh["duplicate"] is False and fresh["task_id"] != first
    bad = tm("enqueue", flow, "--idempotency-key", "k", env={"TM_IDEMPOTENCY_TTL_S": "x"})
    assert bad.returncode == 2 and "TM_IDEMPOTENCY_TTL_S" in bad.stderr


def test_a_submitter_paused_after_claiming_its_key_keeps_it_however_long_it_sleeps(
    dirs: DataDirs, clock: FakeClock, echo_snapshot: FlowSnapshot, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given submitter A paused in the middle of writing its keyed task (as SIGSTOP would)
    import threading

    from tracemind.backend.file.pack_writer import PackWriter

    paused, resume = threading.Event(), threading.Event()
    real_write = PackWriter.add

    def pausing_write(*args: Any, **kwargs: Any) -> None:
        if threading.current_thread().name == "submitter-a":
            paused.set()
            assert resume.wait(30)
        real_write(*args, **kwargs)

    monkeypatch.setattr(PackWriter, "add", pausing_write)
    a = open_stores(dirs, durable=False, clock=clock).submitter(TTL_S)
    results: list[Any] = []
    thread = threading.Thread(
        target=lambda: results.append(a.submit(echo_snapshot, {}, idempotency_key="k")),
        name="submitter-a",
    )
    thread.start()
    try:
        assert paused.wait(10)
        # When it stays paused far longer than any grace period, and B submits the same key
        clock.advance(3600)
        b = open_stores(dirs, durable=False, clock=clock)
        b.keys.lock_timeout_s = 0.3
        # Then B is told the key is busy; it never gets a second task for it
        with pytest.raises(LockTimeout):
            b.submitter(TTL_S).submit(echo_snapshot, {}, idempotency_key="k")
    finally:
        resume.set()
        thread.join(10)
    # And once A resumes, its task is the one task of the key
    [first] = results
    assert first.duplicate is False
    stores = open_stores(dirs, durable=False, clock=clock)
    assert stores.queue.stats().pending == 1
    again = stores.submitter(TTL_S).submit(echo_snapshot, {}, idempotency_key="k")
    assert (again.task_id, again.duplicate) == (first.task_id, True)


def test_purging_a_dead_task_frees_its_key(
    stores: Stores, clock: FakeClock, echo_snapshot: FlowSnapshot
) -> None:
    # Given a keyed task that died and was purged from the DLQ
    submitter = stores.submitter(TTL_S)
    first = submitter.submit(echo_snapshot, {}, idempotency_key="k")
    lease = stores.queue.lease("c1", LEASE_S)
    assert lease is not None
    stores.queue.dead_letter(lease, Failure("boom"))
    assert stores.purge_dead(first.task_id) is True
    # When the key is submitted again
    again = submitter.submit(echo_snapshot, {}, idempotency_key="k")
    # Then it is a new task: the key did not outlive its task
    assert again.duplicate is False and again.task_id != first.task_id
    assert _status(stores, again.task_id) is TaskStatus.PENDING


def test_a_key_on_another_file_system_than_its_task_gets_a_copy(
    stores: Stores, echo_snapshot: FlowSnapshot, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an idempotency directory where a hard link to the queue's files fails (EXDEV)
    import errno
    import os

    real_link = os.link
    keys_dir = os.fspath(stores.dirs.idempotency)

    def cross_device(source: Any, target: Any, *args: Any, **kwargs: Any) -> None:
        if os.fspath(target).startswith(keys_dir):
            raise OSError(errno.EXDEV, "Invalid cross-device link", os.fspath(source))
        real_link(source, target, *args, **kwargs)

    monkeypatch.setattr(os, "link", cross_device)
    submitter = stores.submitter(TTL_S)
    # When a keyed task is submitted, then the same key again
    first = submitter.submit(echo_snapshot, {"n": 1}, idempotency_key="k")
    again = submitter.submit(echo_snapshot, {"n": 2}, idempotency_key="k")
    # Then the key's record is a whole copy of the task's pack (a file of its own), and it
    # blocks the key like a link would
    [record] = (stores.dirs.idempotency / "keys").iterdir()
    assert record.stat().st_nlink == 1
    key = stores.keys.get("k")
    assert key is not None and key.task_id == first.task_id
    assert (again.task_id, again.duplicate) == (first.task_id, True)
    assert stores.queue.stats().pending == 1
