"""Consumers killed (SIGKILL) or paused (SIGSTOP) at random instants while tasks succeed, are
retried and are dead-lettered: inside lease, renew, ack, retry and dead-letter.

What must hold: every task ends in exactly one terminal state, the one its failures call for
(succeeded, or dead once its attempts are spent); none is lost or left in flight; and a task
uses more attempts than its schedule only when a consumer that held one was killed or paused
past its lease (then its lease was recovered and the task ran again elsewhere; a paused consumer
that wakes up finds its lease lost and changes nothing but a late result); no attempt runs
twice.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from tm_testing import Processes, Tm, wait_until
from tracemind.backend.file.stores import Stores, open_stores
from tracemind.config import DataDirs
from tracemind.queue.names import new_task_id
from tracemind.queue.protocol import NewTask, TaskStatus
from tracemind.queue.records import new_record

pytestmark = pytest.mark.slow

LEASE_S = 1.0
"""Short, so that a paused consumer's lease lapses within the test and is recovered."""
FAULTS = 6
TASKS = 360
SCHEDULE = {"ok": 1, "flaky": 2, "doomed": 2}
"""Executions each kind of task needs without faults: ``flaky`` fails its first attempt,
``doomed`` every attempt (it has two)."""
MAX_ATTEMPTS = {"ok": 2 + FAULTS, "flaky": 2 + FAULTS, "doomed": 2}
"""Enough for the tasks that should succeed to outlast every fault (a lease lost to one counts
as an attempt)."""


def _task(kind: str) -> NewTask:
    now_s = time.time()
    task_id = new_task_id(now_s)
    attempts = MAX_ATTEMPTS[kind]
    retry = {"max_attempts": attempts, "base_ms": 50.0, "factor": 1.0, "jitter_ms": 0.0}
    record = new_record(
        task_id=task_id,
        flow={"flow": {"id": "faults"}, "source_path": "faults.json", "sha256": "0" * 64},
        inputs={"kind": kind},
        max_attempts=attempts,
        enqueued_at=now_s,
        policy={"retry": retry, "timeout_s": None},
    )
    return NewTask(task_id, record, now_s)


def _executions(record_dir: Path) -> list[tuple[str, int, int]]:
    """Every (task id, pid, attempt) the consumers recorded as they began a task."""
    rows = []
    for path in record_dir.glob("*.log"):
        for line in path.read_text().splitlines():
            task_id, pid, attempt = line.split()
            rows.append((task_id, int(pid), int(attempt)))
    return rows


def test_consumers_killed_or_paused_at_random_instants_settle_every_task_once(
    tm: Tm, processes: Processes, dirs: DataDirs, record_dir: Path, tmp_path: Path
) -> None:
    # Given 360 tasks — a third succeed, a third fail once, a third fail every attempt (the
    # helper consumer fails them by their input's kind) — and three consumer processes on them
    rng = random.Random()
    stores = open_stores(dirs, durable=True)
    kinds = {}
    for n in range(TASKS):
        task = _task(list(SCHEDULE)[n % 3])
        stores.queue.enqueue([task])
        kinds[task.task_id] = task.record["input"]["kind"]
    stop = tmp_path / "stop"
    live: dict[str, subprocess.Popen[Any]] = {}

    def start(consumer_id: str) -> None:
        command = [sys.executable, "-m", "tm_test_consumer", consumer_id, str(LEASE_S), str(stop)]
        live[consumer_id] = processes.start(command, env=tm.env)
        wait_until((record_dir / f"ready-{consumer_id}").exists, 30, f"consumer {consumer_id}")

    for n in range(3):
        start(f"c{n}")
    # When, six times, a random consumer is killed (and replaced), or paused for longer than its
    # lease and then let go, at a random instant
    victims: set[int] = set()
    for n in range(FAULTS):
        time.sleep(rng.uniform(0.05, 0.3))
        victim_id = rng.choice(sorted(live))
        victim = live[victim_id]
        victims.add(victim.pid)
        if rng.random() < 0.5:
            victim.send_signal(signal.SIGKILL)
            victim.wait(timeout=10)
            del live[victim_id]
            start(f"r{n}")
        else:
            victim.send_signal(signal.SIGSTOP)
            time.sleep(LEASE_S * 2)
            victim.send_signal(signal.SIGCONT)
    # Then every task ends in one terminal state, the one its kind calls for
    wait_until(lambda: _settled(stores, kinds) == TASKS, 120, "every task to settle")
    stop.touch()
    for proc in live.values():
        assert proc.wait(timeout=30) == 0
    statuses = {t: stores.queue.find(t).status for t in kinds}  # type: ignore[union-attr]
    expected = {
        "ok": TaskStatus.SUCCEEDED,
        "flaky": TaskStatus.SUCCEEDED,
        "doomed": TaskStatus.DEAD,
    }
    assert statuses == {t: expected[k] for t, k in kinds.items()}
    stats = stores.queue.stats()
    assert (stats.pending, stats.delayed, stats.inflight, stats.damaged) == (0, 0, 0, 0)
    assert stores.dlq.count() == TASKS // 3
    # And no attempt of a task ran twice, and a task used more attempts than its kind's
    # schedule only where a victim held one of them (it ran it, or took it and stopped before)
    runs: dict[str, dict[int, int]] = defaultdict(dict)  # task id -> attempt -> pid
    for task_id, pid, attempt in _executions(record_dir):
        assert attempt not in runs[task_id], (task_id, attempt, "ran twice")
        runs[task_id][attempt] = pid
    assert set(runs) <= set(kinds)
    for task_id, kind in kinds.items():
        attempts = runs[task_id]
        if attempts and max(attempts) > SCHEDULE[kind]:
            skipped = set(range(1, max(attempts))) - set(attempts)
            assert skipped or set(attempts.values()) & victims, (task_id, kind, attempts)
    assert kinds.keys() - runs.keys() <= {t for t, k in kinds.items() if k == "doomed"}
    # (the faults did hit tasks in flight: a victim's attempt that another consumer followed)
    assert any(
        pid in victims and any(later > attempt for later in attempts)
        for attempts in runs.values()
        for attempt, pid in attempts.items()
    ), "no fault hit a task in flight"


def _settled(stores: Stores, task_ids: dict[str, str]) -> int:
    terminal = (TaskStatus.SUCCEEDED, TaskStatus.DEAD)
    found = [stores.queue.find(task_id) for task_id in task_ids]
    return sum(1 for info in found if info is not None and info.status in terminal)
