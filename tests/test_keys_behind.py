"""A big keyed batch makes its key records in a helper thread, each right behind its task's name:
the order holds whatever fails or kills it, and every key still ends naming one task."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tm_testing import NO_THREAD_PRELUDE, NOBODY, wait_until
from tracemind.backend.file import keys as keys_module
from tracemind.backend.file import pack_writer
from tracemind.backend.file.keys import LINK_BEHIND_KEYS, LINK_BEHIND_THREAD, LOCK_TIMEOUT_S
from tracemind.backend.file.stores import Stores, open_stores
from tracemind.config import DataDirs
from tracemind.errors import LockTimeout, QueueError
from tracemind.flows import FlowSnapshot
from tracemind.submit import Submission

TTL_S = 3600.0
BIG = LINK_BEHIND_KEYS + 44
ROUNDS = 4


def _batch(count: int = BIG, prefix: str = "k") -> list[Submission]:
    return [Submission({"n": n}, f"{prefix}{n}") for n in range(count)]


def _drain(stores: Stores) -> Counter[str]:
    """How often each key's task ran, draining the queue (each acked)."""
    ran: Counter[str] = Counter()
    while (lease := stores.queue.lease("c", 30.0)) is not None:
        stores.queue.ack(lease, {})
        ran[lease.record["idempotency_key"]] += 1
    return ran


def test_each_key_record_of_a_big_batch_is_made_by_the_helper_right_after_its_task_is_named(
    stores: Stores, echo_snapshot: FlowSnapshot, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given every hard link the process makes recorded, with the thread that made it
    made: list[tuple[str, str, str]] = []
    real_link = os.link
    mutex = threading.Lock()

    def recording_link(source: Any, target: Any, *args: Any, **kwargs: Any) -> None:
        real_link(source, target, *args, **kwargs)
        with mutex:
            made.append((threading.current_thread().name, os.fspath(source), os.fspath(target)))

    monkeypatch.setattr(os, "link", recording_link)
    # When a batch of more than LINK_BEHIND_KEYS keys is submitted, one key twice in it
    items = [*_batch(), Submission({"n": "again"}, "k7")]
    results = stores.submitter(TTL_S).submit_many(echo_snapshot, items)
    monkeypatch.undo()
    # Then each new task's key record was made by the helper thread, after that task's name
    assert [r.duplicate for r in results] == [False] * BIG + [True]
    assert results[-1].task_id == results[7].task_id
    named_at = {
        os.path.basename(target).split("_")[1]: at
        for at, (_, _, target) in enumerate(made)
        if "/pending/" in target
    }
    key_links = [
        (at, thread, target) for at, (thread, _, target) in enumerate(made) if "/keys/" in target
    ]
    assert len(named_at) == len(key_links) == BIG
    assert {thread for _, thread, _ in key_links} == {LINK_BEHIND_THREAD}
    keys = stores.keys
    for n, result in enumerate(results[:BIG]):
        [at] = [
            at for at, _, target in key_links if target.endswith(keys.digest(f"k{n}") + ".json")
        ]
        assert named_at[result.task_id] < at
        record = keys.get(f"k{n}")
        assert record is not None and record.task_id == result.task_id
    # and the helper is gone; the batch again is all duplicates; each key's task runs once
    assert LINK_BEHIND_THREAD not in {t.name for t in threading.enumerate()}
    again = stores.submitter(TTL_S).submit_many(echo_snapshot, _batch())
    assert [r.task_id for r in again] == [r.task_id for r in results[:BIG]]
    assert all(r.duplicate for r in again)
    assert _drain(stores) == Counter({f"k{n}": 1 for n in range(BIG)})


def test_a_big_batch_whose_key_records_fail_part_way_keeps_only_the_tasks_its_keys_name(
    stores: Stores, echo_snapshot: FlowSnapshot, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given key records that fail (a full disk) after the first 100 of a big batch
    real_link_many = keys_module.link_many

    def fails_after_100(items: Any, **kwargs: Any) -> None:
        real_link_many((item for _, item in zip(range(100), items, strict=False)), **kwargs)
        raise QueueError("keys: No space left on device")

    monkeypatch.setattr(keys_module, "link_many", fails_after_100)
    with pytest.raises(QueueError, match="No space left"):
        stores.submitter(TTL_S).submit_many(echo_snapshot, _batch())
    monkeypatch.undo()
    # Then the helper is gone, and the tasks whose keys were not written were withdrawn
    assert LINK_BEHIND_THREAD not in {t.name for t in threading.enumerate()}
    assert stores.queue.stats().pending == 100
    # And a retry is told the first 100 exist, makes the rest, and each key's task runs once
    retry = stores.submitter(TTL_S).submit_many(echo_snapshot, _batch())
    assert [r.duplicate for r in retry] == [True] * 100 + [False] * (BIG - 100)
    assert _drain(stores) == Counter({f"k{n}": 1 for n in range(BIG)})


def test_a_big_batch_whose_tasks_fail_to_be_named_part_way_keeps_those_it_named_and_keyed(
    stores: Stores, echo_snapshot: FlowSnapshot, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given tasks whose names fail (a full disk) after the first 150 of a big batch
    real_link = pack_writer._link
    named = 0

    def fails_after_150(*args: Any) -> None:
        nonlocal named
        if named == 150:
            raise OSError(28, "No space left on device")
        real_link(*args)
        named += 1

    monkeypatch.setattr(pack_writer, "_link", fails_after_150)
    with pytest.raises(QueueError, match="No space left"):
        stores.submitter(TTL_S).submit_many(echo_snapshot, _batch())
    monkeypatch.undo()
    # Then each of the 150 named tasks got its key record, and nothing else is pending
    assert stores.queue.stats().pending == 150
    assert all(stores.keys.get(f"k{n}") is not None for n in range(150))
    assert all(stores.keys.get(f"k{n}") is None for n in range(150, BIG))
    # And a retry is told those exist, makes the rest, and each key's task runs once
    retry = stores.submitter(TTL_S).submit_many(echo_snapshot, _batch())
    assert [r.duplicate for r in retry] == [True] * 150 + [False] * (BIG - 150)
    assert _drain(stores) == Counter({f"k{n}": 1 for n in range(BIG)})


SLOW_SUBMITTER = """
import os, sys, time
from tracemind.backend.file import pack_writer
from tracemind.backend.file.stores import open_stores
from tracemind.config import DataDirs
from tracemind.flows import load_flow
from tracemind.submit import Submission

real_link = pack_writer._link
def slow_link(*args):  # names its tasks slowly: the signal lands while keys follow them
    real_link(*args)
    time.sleep(0.0005)
pack_writer._link = slow_link
root, flow, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
stores = open_stores(DataDirs(f"{root}/queue", f"{root}/idempotency", f"{root}/dlq"), durable=True)
items = [Submission({"n": n}, f"k{n}") for n in range(count)]
stores.submitter(3600.0).submit_many(load_flow(flow), items)
"""


@pytest.mark.parametrize("fault", ["SIGKILL", "SIGSTOP"])
def test_a_big_batch_signalled_while_its_keys_follow_its_tasks_then_retried_runs_each_key_once(
    tmp_path: Path, echo_snapshot: FlowSnapshot, fault: str
) -> None:
    script = tmp_path / "slow_submitter.py"
    script.write_text(SLOW_SUBMITTER)
    flow = tmp_path / "flows" / "echo.json"
    count = 2 * LINK_BEHIND_KEYS
    rng = random.Random(f"keys-behind-{fault}")
    keyed_at_signal: list[int] = []
    for round_no in range(ROUNDS):
        # Given a big keyed batch signalled once its first key records exist, its tasks
        # still being named
        root = tmp_path / f"round-{round_no}"
        keys_dir = root / "idempotency" / "keys"
        first = subprocess.Popen([sys.executable, str(script), str(root), str(flow), str(count)])
        try:
            wait_until(lambda d=keys_dir: d.is_dir() and any(d.iterdir()), 60, "a key record")
            time.sleep(rng.uniform(0.0, 0.15))  # (its tasks take ~0.3 s to name)
            first.send_signal(getattr(signal, fault))
            if fault == "SIGKILL":
                first.wait(timeout=60)
            keyed_at_signal.append(len(list(keys_dir.iterdir())))
            stores = open_stores(
                DataDirs(root / "queue", root / "idempotency", root / "dlq"), durable=True
            )
            if fault == "SIGSTOP":
                # (a paused submitter keeps its locks: a retry meanwhile waits, then gives up
                # without taking a key over)
                stores.keys.lock_timeout_s = 0.2
                with pytest.raises(LockTimeout):
                    stores.submitter(TTL_S).submit_many(echo_snapshot, _batch(count))
                stores.keys.lock_timeout_s = LOCK_TIMEOUT_S
                first.send_signal(signal.SIGCONT)
                assert first.wait(timeout=60) == 0
        finally:
            if first.poll() is None:
                first.send_signal(signal.SIGKILL)
            first.wait(timeout=60)
        # When the client retries the whole batch
        retry = stores.submitter(TTL_S).submit_many(echo_snapshot, _batch(count))
        # Then every key names one existing task, and each key's task runs exactly once
        for n, result in enumerate(retry):
            record = stores.keys.get(f"k{n}")
            assert record is not None and record.task_id == result.task_id
        assert _drain(stores) == Counter({f"k{n}": 1 for n in range(count)})
        assert stores.queue.stats().pending == 0
    # (most signals landed while the batch was at work)
    assert sum(keyed < count for keyed in keyed_at_signal) >= ROUNDS // 2


BATCH_SUBMITTER = """
import json, os, sys, time
from tracemind.backend.file.stores import open_stores
from tracemind.config import DataDirs
from tracemind.flows import load_flow
from tracemind.submit import Submission

root, flow, go, order = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
stores = open_stores(DataDirs(f"{root}/queue", f"{root}/idempotency", f"{root}/dlq"), durable=True)
numbers = list(range(int(sys.argv[5])))
if order == "reversed":
    numbers.reverse()
snapshot = load_flow(flow)
while not os.path.exists(go):
    time.sleep(0.001)
results = stores.submitter(3600.0).submit_many(snapshot, [Submission({"n": n}, f"k{n}") for n in numbers])
print(json.dumps({f"k{n}": [r.task_id, r.duplicate] for n, r in zip(numbers, results)}))
"""


def test_two_processes_submitting_one_big_keyed_batch_at_once_agree_on_one_task_per_key(
    tmp_path: Path, echo_snapshot: FlowSnapshot
) -> None:
    # Given two processes about to submit the same big keyed batch, in opposite orders
    script = tmp_path / "batch_submitter.py"
    script.write_text(BATCH_SUBMITTER)
    flow, go, root = tmp_path / "flows" / "echo.json", tmp_path / "go", tmp_path / "data"
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(root), str(flow), str(go), order, str(BIG)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for order in ("forward", "reversed")
    ]
    # When both go at once
    go.touch()
    outputs = [proc.communicate(timeout=120)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0]
    first, second = (json.loads(out) for out in outputs)
    # Then every key resolves to one task in both, made by exactly one of them
    stores = open_stores(DataDirs(root / "queue", root / "idempotency", root / "dlq"), durable=True)
    for n in range(BIG):
        key = f"k{n}"
        assert first[key][0] == second[key][0]
        assert sorted([first[key][1], second[key][1]]) == [False, True]
        record = stores.keys.get(key)
        assert record is not None and record.task_id == first[key][0]
    # And each key's task runs exactly once
    assert _drain(stores) == Counter({f"k{n}": 1 for n in range(BIG)})


NO_THREAD_SUBMITTER = (
    """
import json, sys
from tracemind.backend.file.stores import open_stores
from tracemind.config import DataDirs
from tracemind.flows import load_flow
from tracemind.submit import Submission

root, flow, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
snapshot = load_flow(flow)
"""
    + NO_THREAD_PRELUDE
    + """
stores = open_stores(DataDirs(f"{root}/queue", f"{root}/idempotency", f"{root}/dlq"), durable=True)
items = [Submission({"n": n}, f"k{n}") for n in range(count)]
results = stores.submitter(3600.0).submit_many(snapshot, items)
print(json.dumps([r.task_id for r in results]))
"""
)


def test_a_big_batch_where_no_thread_may_start_links_its_keys_after_its_tasks(
    nobodys_data: Path, echo_snapshot: FlowSnapshot, tmp_path: Path
) -> None:
    # Given a process of another user that may start no thread (RLIMIT_NPROC)
    root = nobodys_data
    flow = root.parent / "echo.json"
    flow.write_bytes((tmp_path / "flows" / "echo.json").read_bytes())
    flow.chmod(0o644)
    # When it submits a big keyed batch
    done = subprocess.run(
        [*NOBODY, sys.executable, "-c", NO_THREAD_SUBMITTER, str(root), str(flow), str(BIG)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # Then it succeeds all the same: every key names its task, and each runs once
    assert done.returncode == 0, done.stderr
    said, ids = done.stdout.splitlines()
    assert said == "no thread may start"
    stores = open_stores(DataDirs(root / "queue", root / "idempotency", root / "dlq"), durable=True)
    for n, task_id in enumerate(json.loads(ids)):
        record = stores.keys.get(f"k{n}")
        assert record is not None and record.task_id == task_id
    assert _drain(stores) == Counter({f"k{n}": 1 for n in range(BIG)})
