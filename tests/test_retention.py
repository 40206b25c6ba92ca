"""Retention: each kind of record is removed after its TTL and not before; a removed result
never lets its task run again; a dry run removes nothing; a pass has a bounded cost."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tm_testing import FakeClock, Tm, make_task, pending_path
from tracemind.backend.file.packs import task_bytes
from tracemind.backend.file.retention import Pruner
from tracemind.backend.file.stores import Stores, open_stores
from tracemind.backend.retention import DAY_S, RetentionPolicy
from tracemind.config import DataDirs
from tracemind.errors import UsageError
from tracemind.flows import FlowSnapshot
from tracemind.fsutil import dump_json
from tracemind.queue.names import PendingName
from tracemind.queue.protocol import Failure, TaskStatus

LEASE_S = 30.0
POLICY = RetentionPolicy(result_ttl_s=7 * DAY_S, key_ttl_s=DAY_S, dlq_audit_ttl_s=30 * DAY_S)


@pytest.fixture
def real_stores(dirs: DataDirs) -> Stores:
    """Stores on the real clock: retention compares file times with it."""
    return open_stores(dirs, durable=False, clock=time.time)


def _age(path: str | Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def _succeed(stores: Stores, snapshot: FlowSnapshot, key: str | None = None) -> str:
    result = stores.submitter(POLICY.key_ttl_s).submit(snapshot, {}, idempotency_key=key)
    lease = stores.queue.lease("c1", LEASE_S)
    assert lease is not None and lease.task_id == result.task_id
    stores.queue.ack(lease, {"ok": True})
    return result.task_id


def _backdate_done(stores: Stores, task_id: str, seconds: float) -> Path:
    """Make a done record look finished ``seconds`` ago (its completion line and its mtime)."""
    path = Path(stores.queue.done_path(task_id))
    # (a task's own lines, out of its pack, rewritten as a file of its own)
    record, _, completion = task_bytes(path.read_bytes(), task_id).partition(b"\n")
    entry = json.loads(completion)
    entry["finished_at"] = time.time() - seconds
    path.unlink()
    path.write_bytes(record + b"\n" + dump_json(entry))
    _age(path, seconds)
    return path


def test_a_result_is_removed_after_its_ttl_and_not_before(
    real_stores: Stores, echo_snapshot: FlowSnapshot
) -> None:
    young, old = _succeed(real_stores, echo_snapshot), _succeed(real_stores, echo_snapshot)
    _backdate_done(real_stores, old, 8 * DAY_S)
    pruner = Pruner(real_stores, POLICY)
    # The hour bucket of both is recent: nothing goes until the hour itself is past the TTL
    assert pruner.prune()["results"] == 0
    later = time.time() + 8 * DAY_S
    removed = pruner.prune(now_s=later)
    # (seen from 8 days later, the young one finished 8 days ago too: both expired)
    assert removed["results"] == 2
    assert real_stores.queue.find(old) is None and real_stores.queue.find(young) is None


def test_a_result_whose_task_may_have_a_stale_copy_is_kept(
    real_stores: Stores, echo_snapshot: FlowSnapshot
) -> None:
    # Given a succeeded task with a pending copy a crash left behind (delivered before)
    task_id = _succeed(real_stores, echo_snapshot)
    done = Path(real_stores.queue.done_path(task_id))
    stale = pending_path(real_stores.queue, PendingName(int(time.time() * 1000), task_id, 1))
    stale.write_bytes(done.read_bytes().partition(b"\n")[0])
    # When a prune runs long after the TTL
    removed = Pruner(real_stores, POLICY).prune(now_s=time.time() + 30 * DAY_S)
    # Then the result is kept, and the stale copy is discarded, never run
    assert removed["results"] == 0 and done.exists()
    assert real_stores.queue.lease("c2", LEASE_S) is None
    info = real_stores.queue.find(task_id)
    assert info is not None and info.status is TaskStatus.SUCCEEDED


def test_a_key_goes_after_its_ttl_before_its_result(
    real_stores: Stores, echo_snapshot: FlowSnapshot
) -> None:
    task_id = _succeed(real_stores, echo_snapshot, key="k")
    [key_file] = (real_stores.dirs.idempotency / "keys").iterdir()
    pruner = Pruner(real_stores, POLICY)
    assert pruner.prune()["keys"] == 0  # a fresh key stays
    _age(key_file, 2 * DAY_S)
    _backdate_done(real_stores, task_id, 2 * DAY_S)
    removed = pruner.prune()
    assert (removed["keys"], removed["results"]) == (1, 0)  # the result stays 7 days
    again = real_stores.submitter(POLICY.key_ttl_s).submit(echo_snapshot, {}, idempotency_key="k")
    assert again.duplicate is False


def test_a_key_of_a_live_task_is_never_removed(
    real_stores: Stores, echo_snapshot: FlowSnapshot
) -> None:
    first = real_stores.submitter(POLICY.key_ttl_s).submit(echo_snapshot, {}, idempotency_key="k")
    [key_file] = (real_stores.dirs.idempotency / "keys").iterdir()
    _age(key_file, 30 * DAY_S)  # waiting for a month in a deep backlog
    assert Pruner(real_stores, POLICY).prune(now_s=time.time() + 30 * DAY_S)["keys"] == 0
    again = real_stores.submitter(POLICY.key_ttl_s).submit(echo_snapshot, {}, idempotency_key="k")
    assert (again.task_id, again.duplicate) == (first.task_id, True)


def test_dlq_audit_copies_quarantine_and_temporaries_expire(
    real_stores: Stores, clock: FakeClock
) -> None:
    task = make_task(time.time, max_attempts=1)
    real_stores.queue.enqueue([task])
    lease = real_stores.queue.lease("c1", LEASE_S)
    assert lease is not None
    real_stores.queue.dead_letter(lease, Failure("boom"))
    assert real_stores.purge_dead(task.task_id)
    [audit] = (real_stores.dirs.dlq / "purged").iterdir()
    quarantine = real_stores.dirs.queue / "quarantine"
    quarantine.mkdir()
    old_stamp = int((time.time() - 8 * DAY_S) * 1000)
    (quarantine / f"junk.{old_stamp}.abcdef").write_text("x")
    (quarantine / f"fresh.{int(time.time() * 1000)}.abcdef").write_text("x")
    leftover = real_stores.dirs.queue / "tmp" / "x.json.1234.tmp"
    leftover.write_text("{")
    pruner = Pruner(real_stores, POLICY)
    first = pruner.prune()
    assert (first["dlq_audit"], first["quarantine"], first["temporaries"]) == (0, 1, 0)
    _age(audit, 31 * DAY_S)
    _age(leftover, 2 * 3600)
    second = pruner.prune()
    assert (second["dlq_audit"], second["temporaries"]) == (1, 1)
    assert [p.name[:6] for p in quarantine.iterdir()] == ["fresh."]


def test_a_dry_run_counts_what_would_go_and_removes_nothing(tm: Tm, real_stores: Stores) -> None:
    # Given an old quarantined file and an old temporary, both expired
    quarantine = real_stores.dirs.queue / "quarantine"
    quarantine.mkdir(parents=True)
    junk = quarantine / f"junk.{int((time.time() - 8 * DAY_S) * 1000)}.abcdef"
    junk.write_text("x")
    leftover = real_stores.dirs.queue / "tmp" / "x.json.1234.tmp"
    leftover.parent.mkdir(parents=True, exist_ok=True)
    leftover.write_text("{")
    _age(leftover, 2 * 3600)
    # When `tm queue prune --dry-run` runs, Then it counts them and leaves them
    dry = tm.json("queue", "prune", "--dry-run", "--json")
    assert dry["dry_run"] is True
    assert (dry["removed"]["quarantine"], dry["removed"]["temporaries"]) == (1, 1)
    assert junk.exists() and leftover.exists()
    # And a real run removes them
    done = tm.json("queue", "prune", "--json")
    assert (done["removed"]["quarantine"], done["removed"]["temporaries"]) == (1, 1)
    assert not junk.exists() and not leftover.exists()


def test_a_ttl_below_the_minimum_or_the_key_ttl_is_refused_with_one_line(tm: Tm) -> None:
    with pytest.raises(UsageError, match="at least 3600"):
        RetentionPolicy.from_env({"TM_IDEMPOTENCY_TTL_S": "60", "TM_RESULT_TTL_S": "10"})
    with pytest.raises(UsageError, match="must not be shorter than"):
        RetentionPolicy.from_env({"TM_RESULT_TTL_S": "7200"})
    proc = tm("queue", "prune", env={"TM_RESULT_TTL_S": "10"})
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_a_pass_removes_at_most_its_budget(
    real_stores: Stores, echo_snapshot: FlowSnapshot
) -> None:
    ids = [_succeed(real_stores, echo_snapshot) for _ in range(30)]
    for task_id in ids:
        _backdate_done(real_stores, task_id, 8 * DAY_S)
    pruner = Pruner(real_stores, POLICY)
    later = time.time() + 8 * DAY_S
    assert pruner.prune(now_s=later, budget=10)["results"] == 10
    assert pruner.prune(now_s=later, budget=100)["results"] == 20
