"""Damage in every directory, then real ``tm`` readers and a real worker pool: only the damaged
records are affected, readers skip them, writers quarantine them and log their paths."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from tm_testing import (
    FakeClock,
    FlowFiles,
    Tm,
    done_path,
    files_under,
    json_lines,
    key_record,
    pending_path,
    read_records,
)
from tracemind.backend.file.stores import open_stores
from tracemind.config import DataDirs
from tracemind.flows import load_flow
from tracemind.queue.names import InflightName, PendingName
from tracemind.queue.protocol import Failure

pytestmark = pytest.mark.slow


def _fake_id(clock: FakeClock, n: int) -> str:
    return f"{int(clock() * 1000):012x}{n:010x}"


@pytest.fixture
def damaged(dirs: DataDirs, flows: FlowFiles) -> dict[str, Any]:
    """A queue with good tasks, a succeeded one, a dead one, and damage in every directory."""
    clock = FakeClock(time.time() - 120)
    stores = open_stores(dirs, durable=False, clock=clock)
    snapshot = load_flow(flows.write("rec", "tm_test_hooks.record"), check_hooks=False)
    submitter = stores.submitter(3600)
    # a succeeded task, and a dead one
    done_id = submitter.submit(snapshot, {}).task_id
    lease = stores.queue.lease("old", 30)
    assert lease is not None
    stale_copy = stores.queue.inflight_dir / str(lease.handle)
    stale_bytes = stale_copy.read_bytes()
    stores.queue.ack(lease, {"ok": True})
    dead_id = submitter.submit(snapshot, {}).task_id
    lease = stores.queue.lease("old", 30)
    assert lease is not None
    stores.queue.dead_letter(lease, Failure("boom"))
    # good work still to do
    good = [submitter.submit(snapshot, {"n": n}).task_id for n in range(4)]
    ms = int(clock() * 1000)
    q = stores.queue
    bad: dict[str, Path] = {
        # the succeeded task: its done record truncated, and a stale copy of its first delivery
        # back in pending (as a recovery of that lease leaves it)
        "done": done_path(q, done_id),
        "stale": pending_path(q, PendingName(ms, done_id, 1)),
        "pending-garbage": q.pending_dir / "junk.txt",
        "pending-empty": pending_path(q, PendingName(ms, _fake_id(clock, 1), 0)),
        "pending-torn": pending_path(q, PendingName(ms, _fake_id(clock, 2), 0)),
        "inflight-torn": q.inflight_dir / str(InflightName(_fake_id(clock, 3), 1, "x", "0" * 8, 0)),
        "inflight-garbage": q.inflight_dir / "core",
        "dlq-torn": dirs.dlq / f"{_fake_id(clock, 4)}.json",
        "dlq-garbage": dirs.dlq / "README",
    }
    contents = {
        "done": b'{"status": "succ',
        "stale": stale_bytes,
        "pending-empty": b"",
        "pending-torn": b'{"v": 1, "task_id": "',
        "inflight-torn": b'{"v": 1',
        "dlq-torn": b'{"task_id"',
    }
    for name, path in bad.items():
        if path.exists():  # (the done record is a name of a pack shared with other tasks:
            path.unlink()  # damage at this name is a file of its own)
        path.write_bytes(contents.get(name, b"\x00garbage"))
    keys = dirs.idempotency / "keys"
    with stores.keys.locked("k-torn"):
        stores.keys.put("k-torn", good[0], clock())
    [key_file] = keys.iterdir()
    key_file.unlink()  # (a second name of the task's file: writing through it would tear it)
    key_file.write_bytes(b'{"key": "k-')
    bad["key-torn"] = key_file
    return {"good": good, "done_id": done_id, "dead_id": dead_id, "bad": bad}


def test_damaged_records_affect_only_themselves(
    tm: Tm, damaged: dict[str, Any], record_dir: Path, tmp_path: Path, data_root: Path
) -> None:
    bad: dict[str, Path] = damaged["bad"]
    before = files_under(data_root)
    # Readers do not crash, skip the damage, and change nothing
    stats = tm.json("queue", "stats", "--json")
    # (counted by name until quarantined: the torn pending files and the torn DLQ entry)
    assert (stats["pending"], stats["dead"]) == (4 + 3, 1 + 1)
    assert stats["damaged"] == 3  # the garbage names in pending/, inflight/ and the DLQ
    assert [e["task_id"] for e in tm.json("dlq", "ls", "--json")] == [damaged["dead_id"]]
    shown = tm.json("task", "show", damaged["done_id"], "--json")
    assert (shown["status"], shown.get("damaged")) == ("succeeded", True)
    torn_id = bad["pending-torn"].name.split("_")[1]
    torn = tm("task", "show", torn_id, "--json")
    assert torn.returncode == 1 and json.loads(torn.stdout)["status"] == "damaged"
    assert files_under(data_root) == before
    # When a worker pool runs until the queue is empty
    log = tmp_path / "workers.log"
    pool = tm.start("workers", "start", "-n", "2", "--lease-s", "5", "--burst", stdout=log)
    assert pool.wait(timeout=60) == 0, log.read_text()
    # Then every good task ran once, and the succeeded task did not run again
    runs = [task_id for task_id, _, _ in read_records(record_dir)]
    assert sorted(runs) == sorted(damaged["good"])
    for task_id in damaged["good"]:
        assert tm.json("task", "show", task_id, "--json")["status"] == "succeeded"
    assert tm.json("task", "show", damaged["done_id"], "--json")["status"] == "succeeded"
    # And every damaged queue record was moved aside, with a log line naming it
    quarantined = {
        e["path"] for e in json_lines(log) if e.get("event") == "damaged record quarantined"
    }
    for name in ("pending-garbage", "inflight-garbage", "inflight-torn"):
        assert str(bad[name]) in quarantined, name
    for name in ("pending-empty", "pending-torn"):  # claimed first, so named by their lease
        task_id = bad[name].name.split("_")[1]
        assert any(f"/inflight/{task_id}_1_" in path for path in quarantined), name
    assert not any(bad[name].exists() for name in bad if name.startswith(("pending", "infl")))
    assert not bad["stale"].exists()
    assert bad["done"].exists()  # the fence stays, damaged or not
    stats = tm.json("queue", "stats", "--json")
    assert (stats["pending"], stats["inflight"], stats["delayed"]) == (0, 0, 0)
    assert (stats["damaged"], stats["dead"]) == (1, 2)  # the DLQ damage waits for a DLQ writer
    # And a DLQ writer and a keyed submission quarantine the rest, logging to stderr
    requeue = tm("dlq", "requeue", "--all", "--json")
    assert requeue.returncode == 0
    assert json.loads(requeue.stdout) == {"requeued": [damaged["dead_id"]]}
    for name in ("dlq-torn", "dlq-garbage"):
        assert str(bad[name]) in requeue.stderr and not bad[name].exists()
    flow = Path(tm.cwd, "flows", "rec.json")
    keyed = tm("enqueue", flow, "--idempotency-key", "k-torn", "--json")
    assert keyed.returncode == 0
    assert json.loads(keyed.stdout)["duplicate"] is False
    assert str(bad["key-torn"]) in keyed.stderr
    assert os.path.exists(bad["key-torn"])  # rewritten for the new task
    assert key_record(bad["key-torn"])["task_id"] == json.loads(keyed.stdout)["task_id"]
