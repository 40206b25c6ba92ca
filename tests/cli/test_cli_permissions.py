"""A data directory another uid owns and this one cannot write (0o555): read-only verbs work and
create nothing; writers fail with one clear line and create nothing.

Tests run as root, where permission bits do not stop writes, so ``tm`` runs as uid 65534 via
``setpriv``; the tests skip where that is not possible.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tm_testing import ECHO_FLOW, FakeClock, Tm, make_task
from tracemind.config import DataDirs
from tracemind.queue.protocol import Failure
from tracemind.stores import open_stores


@pytest.fixture
def frozen(shared_tmp: Path, nobody_works: bool, tm: Tm) -> dict[str, Any]:
    """A data root with a pending, a succeeded and a dead task, made read-only for everyone."""
    if not nobody_works:
        pytest.skip("cannot run tm as another uid here (needs root and setpriv)")
    root = shared_tmp / "data"
    clock = FakeClock(time.time() - 60)  # the pending task is due now
    stores = open_stores(
        DataDirs(root / "queue", root / "idempotency", root / "dlq"), durable=False, clock=clock
    )
    ids = {}
    for name in ("succeeded", "dead", "pending"):
        task = make_task(clock, max_attempts=1, inputs={"name": name})
        stores.queue.enqueue([task])
        ids[name] = task.task_id
        clock.advance(1)
    lease = stores.queue.lease("c1", 30)
    assert lease is not None
    stores.queue.ack(lease, {"ok": True})
    lease = stores.queue.lease("c1", 30)
    assert lease is not None
    stores.queue.dead_letter(lease, Failure("boom"))
    with stores.keys.locked("k"):
        stores.keys.put("k", ids["pending"], clock())
    (shared_tmp / "echo.json").write_text(json.dumps(ECHO_FLOW))
    for path in [root, *root.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    tm.env["TM_DATA_DIR"] = str(root)
    return {"root": root, "ids": ids, "flow": shared_tmp / "echo.json"}


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*")
    }


def _ok(proc: subprocess.CompletedProcess[str]) -> Any:
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    return json.loads(proc.stdout)


def test_read_only_verbs_work_on_a_directory_they_cannot_write(
    tm: Tm, frozen: dict[str, Any]
) -> None:
    before = _tree(frozen["root"])
    ids = frozen["ids"]

    stats = _ok(tm("queue", "stats", "--json", as_nobody=True))
    shown = {n: _ok(tm("task", "show", t, "--json", as_nobody=True)) for n, t in ids.items()}
    dead = _ok(tm("dlq", "ls", "--json", as_nobody=True))
    dead_one = _ok(tm("dlq", "show", ids["dead"], as_nobody=True))
    waited = tm("task", "wait", ids["succeeded"], "--timeout", "1", as_nobody=True)

    assert (stats["pending"], stats["inflight"], stats["dead"]) == (1, 0, 1)
    assert {n: v["status"] for n, v in shown.items()} == {
        "succeeded": "succeeded",
        "dead": "dead",
        "pending": "pending",
    }
    assert shown["succeeded"]["result"] == {"ok": True}
    assert [e["task_id"] for e in dead] == [ids["dead"]]
    assert dead_one["error"] == "boom"
    assert waited.returncode == 0
    assert _tree(frozen["root"]) == before


@pytest.mark.parametrize(
    "args",
    [
        ["enqueue", "{flow}"],
        ["enqueue", "{flow}", "--idempotency-key", "new-key"],
        ["dlq", "requeue", "--all"],
        ["dlq", "purge", "{dead}"],
    ],
    ids=" ".join,
)
def test_writers_on_a_directory_they_cannot_write_fail_cleanly(
    tm: Tm, frozen: dict[str, Any], args: list[str]
) -> None:
    before = _tree(frozen["root"])
    argv = [a.format(flow=frozen["flow"], dead=frozen["ids"]["dead"]) for a in args]

    proc = tm(*argv, as_nobody=True)

    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("tm: error: ") and str(frozen["root"]) in line
    assert "cannot" in line or "permission denied" in line
    assert _tree(frozen["root"]) == before
