"""A data directory another uid owns and this one cannot write (0o555): read-only verbs work and
create nothing; writers fail with one clear line and create nothing.

Tests run as root, where permission bits do not stop writes, so ``tm`` runs as uid 65534 via
``setpriv``; the tests skip where that is not possible.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tm_testing import ECHO_FLOW, FakeClock, Tm, make_task, task_file_bytes
from tracemind.backend.file.stores import open_stores
from tracemind.config import DataDirs
from tracemind.queue.protocol import Failure


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


# -- several uids sharing one group ------------------------------------------------------------

SHARED_GID = 23300
ALICE, BOB = 23301, 23302  # in the data's group only (setpriv --clear-groups)
EVE, EVE_GID = 23303, 23304  # outside it

OUTSIDER_PROBE = """
import errno, fcntl, os, sys
for path in sys.argv[1:]:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        print(errno.errorcode[exc.errno])
        continue
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        print("locked")
    except OSError as exc:
        print(errno.errorcode[exc.errno])
    finally:
        os.close(fd)
"""
"""Opens each path read-only and takes a shared flock: prints ``locked`` or the errno's name."""

WHOAMI = "tm_uid_hooks.whoami"
WHOAMI_HOOK = """
import os


def whoami(ctx, state):
    return {"uid": os.getuid()}
"""


def _setpriv(uid: int, gid: int) -> list[str]:
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups"]


def _tm_as(
    tm: Tm, uid: int, gid: int, umask: int, *args: str | Path
) -> subprocess.CompletedProcess[str]:
    """``tm *args`` as ``uid:gid`` (no other group), started under ``umask`` (set before
    ``setpriv``, which passes it on: ``tm`` is exec'ed by setpriv itself, as the other tests)."""
    command = " ".join(shlex.quote(a) for a in [*_setpriv(uid, gid), *tm.command(args)])
    return subprocess.run(
        ["sh", "-c", f"umask {umask:03o} && exec {command}"],
        env=tm.env,
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _probe(uid: int, gid: int, *paths: Path) -> list[str]:
    proc = subprocess.run(
        [*_setpriv(uid, gid), sys.executable, "-c", OUTSIDER_PROBE, *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return proc.stdout.split()


def _open_directories_to_others(root: Path) -> None:
    """Give every directory o+x (as data made by an older release, or a looser admin, has), so
    that what keeps an outsider out below is each file's own mode."""
    for path in [root, *root.rglob("*")]:
        if path.is_dir():
            path.chmod(stat.S_IMODE(path.stat().st_mode) | stat.S_IXOTH)


@pytest.fixture
def group_data(shared_tmp: Path, tm: Tm) -> dict[str, Path]:
    """A data root ``root:SHARED_GID`` 2775 — world-traversable, so what keeps an outsider out
    is what ``tm`` creates inside — and a flow every uid can read whose task returns the uid
    that ran it."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to act as three other users")
    # tm as another uid starts processes of its own (workers, the daemon) from sys.executable
    spawn = "import subprocess, sys; sys.exit(subprocess.run([sys.executable, '-V']).returncode)"
    probe = subprocess.run(
        [*_setpriv(ALICE, SHARED_GID), sys.executable, "-c", spawn],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if probe.returncode != 0:
        pytest.skip(
            f"a process of uid {ALICE} cannot start this checkout's Python ({sys.executable}: "
            "is it under a directory only root can enter? a venv made from /usr/bin/python3 "
            f"works): {(probe.stderr.strip().splitlines() or [''])[-1]}"
        )
    root = shared_tmp / "data"
    root.mkdir()
    os.chown(root, 0, SHARED_GID)
    root.chmod(0o2775)
    hooks = shared_tmp / "hooks"
    hooks.mkdir(mode=0o755)
    (hooks / "tm_uid_hooks.py").write_text(WHOAMI_HOOK)
    flow = {"id": "whoami", "steps": [{"id": "s", "kind": "task", "hooks": {"run": WHOAMI}}]}
    (shared_tmp / "whoami.json").write_text(json.dumps({"flow": flow}))
    for path in (hooks / "tm_uid_hooks.py", shared_tmp / "whoami.json"):
        path.chmod(0o644)
    tm.env.update(
        TM_DATA_DIR=str(root),
        TM_FLOW_CACHE="0",
        TM_ENABLE_DAEMON="1",
        PYTHONPATH=os.pathsep.join([str(hooks), tm.env.get("PYTHONPATH", "")]),
    )
    return {"root": root, "flow": shared_tmp / "whoami.json"}


def _runners(done_dir: Path) -> list[int]:
    """The uid that ran each task in ``done_dir`` (the whoami hook's result)."""
    return [
        json.loads(task_file_bytes(path).splitlines()[-1])["result"]["uid"]
        for path in sorted(done_dir.glob("*/*.json"))
    ]


@pytest.mark.slow
@pytest.mark.parametrize("umask", [0o077, 0o022, 0o002], ids=lambda m: f"umask-{m:03o}")
def test_a_task_one_uid_enqueues_is_run_by_a_worker_of_another_uid_in_the_group(
    tm: Tm, group_data: dict[str, Path], umask: int
) -> None:
    root = group_data["root"]
    # Given three tasks (one with a key) that uid A enqueues under `umask`
    ids = [
        _tm_as(tm, ALICE, SHARED_GID, umask, "enqueue", group_data["flow"], *key).stdout.strip()
        for key in ((), ("--idempotency-key", "k1"), ())
    ]
    assert all(ids) and len(set(ids)) == 3, ids
    # When a worker pool of uid B (same group, same umask) drains the queue
    run = _tm_as(tm, BOB, SHARED_GID, umask, "workers", "start", "--burst", "--lease-s", "5")
    assert run.returncode == 0, run.stdout + run.stderr
    # Then B ran exactly those three, none quarantined, and A sees them succeeded
    stats = json.loads(_tm_as(tm, ALICE, SHARED_GID, umask, "queue", "stats", "--json").stdout)
    assert (stats["pending"], stats["inflight"], stats["dead"], stats["damaged"]) == (0, 0, 0, 0)
    for task_id in ids:
        shown = _tm_as(tm, ALICE, SHARED_GID, umask, "task", "show", task_id, "--json")
        assert json.loads(shown.stdout)["status"] == "succeeded", shown.stderr
    done = sorted((root / "queue" / "done").glob("*/*.json"))
    assert len(done) == 3
    assert [p for p in root.rglob("*") if "quarantine" in p.name] == []
    assert _runners(root / "queue" / "done") == [BOB] * 3
    assert {p.stat().st_gid for p in root.rglob("*")} == {SHARED_GID}
    # And a uid outside the group can neither read a task nor open a key or a key's lock file,
    [lock] = (root / "idempotency" / "locks").iterdir()
    [key] = (root / "idempotency" / "keys").iterdir()
    secrets = [done[0], lock, key]
    assert _probe(EVE, EVE_GID, *secrets) == ["EACCES"] * 3
    # not even where every directory lets others through: the files are 0660
    _open_directories_to_others(root)
    assert _probe(EVE, EVE_GID, *secrets) == ["EACCES"] * 3
    assert _probe(ALICE, SHARED_GID, *secrets) == ["locked"] * 3  # the probe can succeed


@pytest.mark.slow
def test_a_uid_outside_the_group_cannot_open_the_daemon_lock(
    tm: Tm, group_data: dict[str, Path]
) -> None:
    root = group_data["root"]
    lock = root / "state" / "daemon.lock"
    # Given a daemon that uid B started under umask 077, running a task uid A enqueued
    started = _tm_as(tm, BOB, SHARED_GID, 0o077, "daemon", "start", "--workers", "1")
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        task_id = _tm_as(tm, ALICE, SHARED_GID, 0o077, "enqueue", group_data["flow"]).stdout.strip()
        waited = _tm_as(tm, ALICE, SHARED_GID, 0o077, "task", "wait", task_id, "--timeout", "30")
        assert waited.returncode == 0, waited.stdout + waited.stderr
        assert _runners(root / "queue" / "done") == [BOB]
        # Then a uid outside the group cannot open the daemon's lock to hold it
        assert _probe(EVE, EVE_GID, lock) == ["EACCES"]
        _open_directories_to_others(root)
        assert _probe(EVE, EVE_GID, lock) == ["EACCES"]
        assert stat.S_IMODE(lock.stat().st_mode) == 0o660
        # while a uid in the group can open it (and finds it held)
        assert _probe(ALICE, SHARED_GID, lock) in (["EAGAIN"], ["EWOULDBLOCK"])
    finally:
        stopped = _tm_as(tm, BOB, SHARED_GID, 0o077, "daemon", "stop", "--timeout", "20")
    assert stopped.stdout.startswith("daemon stopped"), stopped.stdout + stopped.stderr
