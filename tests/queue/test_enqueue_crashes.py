"""Writers of packs killed (SIGKILL) or paused (SIGSTOP) at random instants: inside an unkeyed
enqueue, and inside a checkpoint retiring the packs of writers that are gone.

What must hold: every task whose enqueue returned runs exactly once; a task whose writer died
inside its enqueue runs at most once; a paused writer's pack is never retired while it lives,
and nobody waits for it; a checkpoint killed or paused part-way leaves nothing a later one
cannot finish, and loses no task.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest

from tm_testing import ECHO_FLOW, FakeClock, Processes, Tm, make_task, wait_until
from tracemind.backend.file import packs
from tracemind.backend.file.stores import Stores, open_stores
from tracemind.config import DataDirs
from tracemind.queue.protocol import Failure

pytestmark = pytest.mark.slow

LEASE_S = 30.0

WRITER_SOURCE = '''
"""python WRITER FLOW LOG BATCH: submit BATCH tasks per call until killed, appending the
returned ids to LOG (one write per call, on an O_APPEND descriptor: whole or absent)."""
import os
import sys

from tracemind.backend import open_backend
from tracemind.backend.location import data_location
from tracemind.config import durable, idempotency_ttl_s
from tracemind.flows import load_flow
from tracemind.submission import Submission

flow = load_flow(sys.argv[1])
log = os.open(sys.argv[2], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
batch = int(sys.argv[3])
submitter = open_backend(data_location(), durable=durable()).submitter(idempotency_ttl_s())
os.write(log, b"ready\\n")
for n in range(0, 1_000_000, batch):
    done = submitter.submit_many(flow, [Submission({"n": n + i}) for i in range(batch)])
    os.write(log, b"".join(r.task_id.encode() + b"\\n" for r in done))
'''

AHEAD_WRITER_SOURCE = '''
"""python WRITER FLOW LOG: as WRITER with one task per call, its next packs made ahead slowly
(each step of the helper thread's work waits 0-10 ms first: a wide window to signal it in),
writing "ahead" to LOG as the helper starts."""
import os
import random
import sys
import threading
import time

from tracemind.backend import open_backend
from tracemind.backend.file import journal_stock, pack_writer
from tracemind.backend.location import data_location
from tracemind.config import durable, idempotency_ttl_s
from tracemind.flows import load_flow
from tracemind.submission import Submission

flow = load_flow(sys.argv[1])
log = os.open(sys.argv[2], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)


def slowly(step):
    def slow_step(*args, **kwargs):
        if threading.current_thread() is not threading.main_thread():
            time.sleep(random.uniform(0.0, 0.01))
        return step(*args, **kwargs)

    return slow_step


fill = pack_writer.PackWriter._fill


def announced_fill(self, spare):
    os.write(log, b"ahead\\n")
    fill(self, spare)


pack_writer.PackWriter._fill = announced_fill
pack_writer.PackWriter._make = slowly(pack_writer.PackWriter._make)
pack_writer.fsync_dir = slowly(pack_writer.fsync_dir)
journal_stock.JournalStock._make_one = slowly(journal_stock.JournalStock._make_one)
journal_stock.JournalStock.name = slowly(journal_stock.JournalStock.name)
submitter = open_backend(data_location(), durable=durable()).submitter(idempotency_ttl_s())
os.write(log, b"ready\\n")
for n in range(1_000_000):
    done = submitter.submit(flow, {"n": n})
    os.write(log, done.task_id.encode() + b"\\n")
'''

CHECKPOINT_SOURCE = '''
"""python CHECKPOINTER QUEUE IDEMPOTENCY DLQ READY: retire every pack of a writer that is gone
(READY made first)."""
import sys
from pathlib import Path

from tracemind.backend.file.stores import open_stores_at
from tracemind.clock import system_clock

stores = open_stores_at(*sys.argv[1:4], durable=True, clock=system_clock)
Path(sys.argv[4]).touch()
stores.queue.checkpoint(limit=1_000_000)
'''


def _pack_files(stores: Stores) -> list[str]:
    folder = Path(stores.queue.root) / "packs"
    return sorted(os.listdir(folder)) if folder.exists() else []


def _held_by_a_writer(stores: Stores, name: str) -> bool:
    """Whether ``packs/name`` is a pack whose writer holds it (it may still add to it)."""
    if not name.endswith(".pack"):
        return False
    try:
        fd = os.open(Path(stores.queue.root) / "packs" / name, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        return packs.writer_alive(fd)
    finally:
        os.close(fd)


def _drain(stores: Stores) -> Counter[str]:
    ran: Counter[str] = Counter()
    while (lease := stores.queue.lease("c", LEASE_S)) is not None:
        stores.queue.ack(lease, {})
        ran[lease.task_id] += 1
    stores.queue.flush()
    return ran


def _lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def _logged(log: Path) -> list[str]:
    """The task ids a writer logged (its calls that returned)."""
    return [line for line in log.read_text().splitlines() if line not in ("ready", "ahead")]


def _quarantined(dirs: DataDirs) -> list[Path]:
    return [p for p in dirs.queue.parent.rglob("*") if "quarantine" in p.name]


def _writer_and_flow(tmp_path: Path, source: str) -> tuple[Path, Path]:
    """A writer script of ``source`` and the flow it submits, in ``tmp_path``."""
    writer = tmp_path / "writer.py"
    writer.write_text(textwrap.dedent(source))
    flow = tmp_path / "flow.json"
    flow.write_text(json.dumps(ECHO_FLOW))
    return writer, flow


def _every_returned_task_runs_once(
    stores: Stores, dirs: DataDirs, logs: list[Path], extra_max: int
) -> None:
    """Drain the queue: every task whose call returned (logged) runs exactly once, at most
    ``extra_max`` others (calls their writer was killed inside) run, once each, and nothing
    is left pending, in flight, damaged or quarantined."""
    ran = _drain(stores)
    returned = [task_id for log in logs for task_id in _logged(log)]
    assert len(returned) == len(set(returned)) > 0
    assert {ran[task_id] for task_id in returned} == {1}
    assert len(set(ran) - set(returned)) <= extra_max
    assert set(ran.values()) == {1}
    stats = stores.queue.stats()
    assert (stats.pending, stats.inflight, stats.damaged) == (0, 0, 0)
    assert _quarantined(dirs) == []


@pytest.mark.parametrize("batch", [1, 150], ids=["one task per call", "batches over packs"])
def test_writers_killed_or_paused_inside_an_enqueue_lose_no_task_that_returned(
    tm: Tm, processes: Processes, dirs: DataDirs, tmp_path: Path, batch: int
) -> None:
    # Given writers, one at a time, each submitting ``batch`` tasks per call until it is
    # stopped (a batch over several packs syncs the file system, then retires the packs the
    # writer filled before it)
    rng = random.Random()
    writer, flow = _writer_and_flow(tmp_path, WRITER_SOURCE)
    stores = open_stores(dirs, durable=True)
    logs: list[Path] = []
    for round_number in range(6):
        log = tmp_path / f"writer-{round_number}.log"
        logs.append(log)
        proc = processes.start(
            [sys.executable, str(writer), str(flow), str(log), str(batch)], env=tm.env
        )
        wait_until(lambda log=log: log.exists() and log.read_text() != "", 30, "a writer")
        time.sleep(rng.uniform(0.02, 0.3))
        # When it is killed at a random instant (mostly inside an enqueue: the flush is most
        # of a call), or first paused there for a while
        if rng.random() < 0.5:
            proc.send_signal(signal.SIGSTOP)
            # Then while it is paused the packs it holds stay (it may still add to them; the
            # ones it let go are retired), and every other writer and consumer goes on
            # without waiting for it
            before = _pack_files(stores)
            held = {n for n in before if f"-{proc.pid}-" in n and _held_by_a_writer(stores, n)}
            assert held
            # (their journals, unless it was paused between making a pack and its journal)
            mine = {n for n in before if any(n.startswith(h[: -len(".pack")]) for h in held)}
            stores.queue.checkpoint()
            assert mine <= set(_pack_files(stores))
            stores.queue.enqueue([make_task(time.time)])
            lease = stores.queue.lease("c", LEASE_S)
            assert lease is not None
            stores.queue.retry(lease, Failure("once more"), 0.0)  # (back to pending, runs later)
            proc.send_signal(signal.SIGCONT)
            time.sleep(rng.uniform(0.0, 0.1))
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    # Then once every writer is gone (this one lets its pack go) a checkpoint retires them all
    stores.queue.packs.close()
    stores.queue.checkpoint()
    assert _pack_files(stores) == []
    # And every task whose enqueue returned runs exactly once; of those a writer was killed
    # inside, at most one call's worth per writer exists, and runs once (as do the tasks this
    # test enqueued while a writer was paused: 6 at most)
    _every_returned_task_runs_once(stores, dirs, logs, len(logs) * batch + 6)


def test_writers_killed_or_paused_while_their_next_pack_is_made_lose_nothing_and_leave_nothing(
    tm: Tm, processes: Processes, dirs: DataDirs, tmp_path: Path
) -> None:
    # Given writers, one at a time, each submitting one task per call, whose next pack a helper
    # thread makes ahead (slowly: each of its steps waits first)
    rng = random.Random()
    writer, flow = _writer_and_flow(tmp_path, AHEAD_WRITER_SOURCE)
    stores = open_stores(dirs, durable=True)
    logs: list[Path] = []
    for round_number in range(6):
        log = tmp_path / f"writer-{round_number}.log"
        logs.append(log)
        proc = processes.start([sys.executable, str(writer), str(flow), str(log)], env=tm.env)
        wait_until(lambda log=log: "ahead" in _lines(log), 30, "a pack made ahead")
        # When it is killed at a random instant while its helper works, or first paused there
        time.sleep(rng.uniform(0.0, 0.03))
        if rng.random() < 0.5:
            proc.send_signal(signal.SIGSTOP)
            # Then while it is paused no pack it holds is retired (the one made ahead included)
            held = {n for n in _pack_files(stores) if _held_by_a_writer(stores, n)}
            stores.queue.checkpoint()
            assert held <= set(_pack_files(stores))
            proc.send_signal(signal.SIGCONT)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    # Then once they are gone a checkpoint retires every pack, made ahead or not
    stores.queue.checkpoint()
    assert _pack_files(stores) == []
    # And every task whose call returned runs exactly once, at most one more per writer
    _every_returned_task_runs_once(stores, dirs, logs, len(logs))


def test_a_checkpoint_killed_or_paused_part_way_is_finished_by_the_next_one(
    processes: Processes, dirs: DataDirs, clock: FakeClock, tmp_path: Path
) -> None:
    rng = random.Random()
    checkpointer = tmp_path / "checkpointer.py"
    checkpointer.write_text(textwrap.dedent(CHECKPOINT_SOURCE))
    stores = open_stores(dirs, durable=True, clock=clock)
    enqueued: list[str] = []
    for _ in range(5):
        # Given 150 packs of writers that are gone (one task each)
        for _ in range(150):
            task = make_task(clock)
            stores.queue.enqueue([task])
            stores.queue.packs.close()
            enqueued.append(task.task_id)
        assert len(_pack_files(stores)) == 300  # each pack and its journal
        # When a process retiring them is killed, or paused, at a random instant
        ready = tmp_path / f"ready-{len(enqueued)}"
        argv = [str(d) for d in (checkpointer, dirs.queue, dirs.idempotency, dirs.dlq, ready)]
        proc = processes.start([sys.executable, *argv])
        wait_until(ready.exists, 30, "the checkpointer")
        time.sleep(rng.uniform(0.0, 0.025))  # (retiring 150 packs takes ~30 ms here)
        paused = rng.random() < 0.5
        proc.send_signal(signal.SIGSTOP if paused else signal.SIGKILL)
        # Then the next checkpoint retires what is left (a paused one holds nothing back),
        # and no pack, journal or task is left behind or lost
        stores.queue.checkpoint()
        assert _pack_files(stores) == []
        if paused:
            proc.send_signal(signal.SIGCONT)  # (it finds its work done: no error)
            assert proc.wait(timeout=30) == 0
        else:  # (or it finished first)
            assert proc.wait(timeout=30) in (-signal.SIGKILL, 0)
        assert stores.queue.stats().pending == len(enqueued)
    ran = _drain(stores)
    assert sorted(ran) == sorted(enqueued)
    assert set(ran.values()) == {1}
    assert _quarantined(dirs) == []
