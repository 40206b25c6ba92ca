"""Writers racing, killed and paused as real processes: requeue moves each dead task exactly
once, and a keyed batch killed or stopped at any instant ends, after a retry, with exactly one
existing task per key, which runs once."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tm_testing import FakeClock, Processes, Tm, make_task, read_records
from tracemind.backend.file.stores import Stores, open_stores
from tracemind.config import DataDirs
from tracemind.queue.protocol import Failure

DEAD_TASKS = 200
KEYS = 300
ROUNDS = 50


def _dead_tasks(dirs: DataDirs, flow_path: Path, count: int) -> list[str]:
    """``count`` tasks of the flow at ``flow_path``, each dead after its first attempt."""
    from tracemind.flows import load_flow

    snapshot = load_flow(flow_path, check_hooks=False).to_dict()
    stores = open_stores(dirs, durable=False, clock=FakeClock(time.time()))
    ids = []
    for n in range(count):
        task = make_task(stores.clock, max_attempts=1, inputs={"n": n})
        task.record["flow"] = snapshot
        stores.queue.enqueue([task])
        lease = stores.queue.lease("setup", 30.0)
        assert lease is not None
        stores.queue.dead_letter(lease, Failure("RuntimeError: first attempt"))
        ids.append(task.task_id)
    return ids


@pytest.mark.slow
@pytest.mark.parametrize("requeuers", [2, 3])
def test_concurrent_requeues_of_every_dead_task_run_each_task_exactly_once(
    tm: Tm,
    flows: Any,
    dirs: DataDirs,
    record_dir: Path,
    processes: Processes,
    tmp_path: Path,
    requeuers: int,
) -> None:
    # Given 200 dead tasks whose step records every execution in an append-only log
    flow = flows.write("rec", "tm_test_hooks.record")
    ids = _dead_tasks(dirs, flow, DEAD_TASKS)
    # When several `tm dlq requeue --all` run at the same time
    procs = [
        processes.start(
            [*tm.command(["dlq", "requeue", "--all", "--json"])],
            env=tm.env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(requeuers)
    ]
    outputs = [proc.communicate(timeout=120) for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * requeuers, outputs
    # Then each entry was moved by exactly one of them
    moved = [task_id for out, _ in outputs for task_id in json.loads(out)["requeued"]]
    assert sorted(moved) == sorted(ids)
    # And a burst pool runs each task exactly once
    burst = tm("workers", "start", "-n", "2", "--burst", timeout_s=240)
    assert burst.returncode == 0, burst.stderr
    executions = Counter(task_id for task_id, _, _ in read_records(record_dir))
    assert executions == Counter(dict.fromkeys(ids, 1))
    stats = tm.json("queue", "stats", "--json")
    assert (stats["dead"], stats["pending"], stats["inflight"]) == (0, 0, 0)


def _write_batch(path: Path, keys: range) -> None:
    path.write_text("".join(json.dumps({"k": f"key-{n}", "n": n}) + "\n" for n in keys))


def _assert_one_existing_task_per_key(stores: Stores, task_ids: list[str]) -> None:
    """Every id names a task that exists, its key's, and each key's task is the one it names."""
    for n, task_id in enumerate(task_ids):
        info = stores.queue.find(task_id)
        assert info is not None, f"key-{n} names {task_id}, which does not exist"
        assert (info.record["idempotency_key"], info.record["input"]["n"]) == (f"key-{n}", n)
        key = stores.keys.get(f"key-{n}")
        assert key is not None and key.task_id == task_id


def _assert_each_key_runs_once(stores: Stores, task_ids: list[str]) -> None:
    """Draining the queue runs exactly the tasks ``task_ids`` name, each once (a task that a
    killed submitter wrote before its key record is removed, never run), and leaves nothing."""
    ran: Counter[str] = Counter()
    while (lease := stores.queue.lease("drain", 30.0)) is not None:
        stores.queue.ack(lease, {})
        ran[lease.task_id] += 1
    assert ran == Counter(dict.fromkeys(task_ids, 1))
    stats = stores.queue.stats()
    assert (stats.pending, stats.inflight) == (0, 0)


def _enqueue(tm: Tm, flow: Path, batch: Path, data: Path, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        tm.command(["enqueue", flow, "--json", "--inputs", batch, "--idempotency-key-field", "k"]),
        env={**tm.env, "TM_DATA_DIR": str(data)},
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _timed_batch_s(tm: Tm, flow: Path, batch: Path, data: Path, cwd: Path) -> float:
    """Seconds one whole ``tm enqueue`` of ``batch`` into a fresh ``data`` takes."""
    started_s = time.monotonic()
    assert _enqueue(tm, flow, batch, data, cwd).wait(timeout=60) == 0
    return time.monotonic() - started_s


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["SIGKILL", "SIGSTOP"])
def test_a_keyed_batch_interrupted_at_random_instants_then_retried_keeps_one_task_per_key(
    tm: Tm, flows: Any, dirs: DataDirs, tmp_path: Path, fault: str
) -> None:
    rng = random.Random(f"keyed-{fault}")
    flow = flows.write("keyed", "tracemind.steps.echo")
    batch = tmp_path / "batch.jsonl"
    _write_batch(batch, range(KEYS))
    # (how long one batch takes, start-up included: the instants are drawn within it. Timed
    # as the rounds run it, after a first run, which also validates the flow and caches it;
    # the fastest of three, so that one run slowed by the host does not stretch the window
    # past the batches' end)
    assert _enqueue(tm, flow, batch, tmp_path / "warm-up", tmp_path).wait(timeout=60) == 0
    batch_s = min(
        _timed_batch_s(tm, flow, batch, tmp_path / f"timing-{n}", tmp_path) for n in range(3)
    )
    interrupted = 0
    for round_no in range(ROUNDS):
        # Given a fresh queue, and a keyed batch interrupted at a random instant
        data = tmp_path / f"round-{round_no}"
        first = _enqueue(tm, flow, batch, data, tmp_path)
        time.sleep(rng.uniform(0.0, batch_s))
        interrupted += first.poll() is None
        first.send_signal(getattr(signal, fault))
        try:
            # When the client retries while the first is dead (or still stopped)
            retry = _enqueue(tm, flow, batch, data, tmp_path)
            if fault == "SIGSTOP":
                time.sleep(rng.uniform(0.0, 0.5))  # the retry waits on the stopped one's locks
                first.send_signal(signal.SIGCONT)
            out, err = retry.communicate(timeout=60)
        finally:
            if fault == "SIGSTOP":
                first.send_signal(signal.SIGCONT)
            first.communicate(timeout=60)
        # Then the retry succeeds and there is exactly one existing task per key
        assert retry.returncode == 0, err
        stores = open_stores(
            DataDirs(data / "queue", data / "idempotency", data / "dlq"), durable=False
        )
        task_ids = json.loads(out)["task_ids"]
        _assert_one_existing_task_per_key(stores, task_ids)
        # And a consumer runs each key's task exactly once, and nothing else
        _assert_each_key_runs_once(stores, task_ids)
        assert stores.queue.staged() == []
    assert interrupted >= ROUNDS // 2  # (most signals landed while the batch was at work)
