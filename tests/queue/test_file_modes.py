"""Modes of what TraceMind creates on the data directory: every file 0660 and every directory
2770 (setgid, so entries inherit the directory's group), whatever the caller's umask — for ``tm``
and the daemon (which set umask 007) and for a program that imports tracemind under its own
umask. The owner and the data's group read and write everything; nobody else can read a task,
traverse a directory or open a lock file (docs/deployment.md, "Permissions")."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from tm_testing import FlowFiles, Tm

FILE_MODE, DIR_MODE = 0o660, 0o2770
UMASKS = [0o077, 0o022, 0o002, 0o027]
TESTS_DIR = Path(__file__).resolve().parents[1]


def _modes(root: Path) -> tuple[dict[str, str], set[str]]:
    """Every path under ``root`` (not ``root`` itself) whose mode is not FILE_MODE (files) or
    DIR_MODE (directories), as ``{relative path: mode}``; and the directories holding files."""
    wrong: dict[str, str] = {}
    holders: set[str] = set()
    for path in root.rglob("*"):
        info = path.lstat()
        mode = stat.S_IMODE(info.st_mode)
        expected = DIR_MODE if stat.S_ISDIR(info.st_mode) else FILE_MODE
        if stat.S_ISREG(info.st_mode):
            holders.add(str(path.parent.relative_to(root)))
        if mode != expected:
            wrong[str(path.relative_to(root))] = oct(mode)
    return wrong, holders


def _under_umask(tm: Tm, umask: int, *args: str | Path) -> subprocess.CompletedProcess[str]:
    command = " ".join(f"'{a}'" for a in tm.command(args))
    return subprocess.run(
        ["sh", "-c", f"umask {umask:03o} && exec {command}"],
        env={**tm.env, "TM_ENABLE_DAEMON": "1"},
        cwd=tm.cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("umask", UMASKS, ids=lambda m: f"umask-{m:03o}")
def test_tm_and_the_daemon_create_files_0660_and_directories_2770_whatever_the_umask(
    tm: Tm, flows: FlowFiles, data_root: Path, umask: int
) -> None:
    # Given a succeeding and a dying task enqueued with keys, one without, under `umask`
    ok = flows.write("ok", "tracemind.steps.echo")
    bad = flows.write("bad", "tracemind.steps.fail", retry={"max_attempts": 1})
    for args in ((ok, "--idempotency-key", "k1"), (bad, "--idempotency-key", "k2"), (ok,)):
        _ok(_under_umask(tm, umask, "enqueue", *args))
    # When a daemon (its workers lease, ack and dead-letter) runs them and stops, and the dead
    # task is purged, all under the same umask
    _ok(_under_umask(tm, umask, "daemon", "start", "--workers", "1"))
    try:
        deadline = time.monotonic() + 60
        while True:
            stats = json.loads(_ok(_under_umask(tm, umask, "queue", "stats", "--json")))
            if (stats["pending"], stats["inflight"], stats["dead"]) == (0, 0, 1):
                break
            assert time.monotonic() < deadline, stats
            time.sleep(0.1)
    finally:
        stopped = _under_umask(tm, umask, "daemon", "stop", "--timeout", "20")
    assert stopped.stdout.startswith("daemon stopped"), stopped.stdout + stopped.stderr
    _ok(_under_umask(tm, umask, "dlq", "purge", "--all"))
    # Then every file is 0660 and every directory 2770, of every kind
    wrong, holders = _modes(data_root)
    assert wrong == {}
    for kind in ("idempotency/keys", "idempotency/locks", "dlq/purged", "state"):
        assert kind in holders, sorted(holders)
    assert any(holder.startswith("queue/done/") for holder in holders), sorted(holders)
    assert {p.name for p in (data_root / "state").iterdir()} >= {"daemon.lock", "daemon.json"}
    assert len(list((data_root / "queue" / "done").glob("*/*.json"))) == 2


LIBRARY_PROGRAM = """
import sys
from pathlib import Path

from tm_testing import make_task
from tracemind.config import DataDirs
from tracemind.flows import load_flow
from tracemind.queue.protocol import Failure
from tracemind.stores import open_stores

root = Path(sys.argv[1])
stores = open_stores(DataDirs(root / "queue", root / "idempotency", root / "dlq"), durable=True)
stores.submitter(ttl_s=3600).submit(load_flow(sys.argv[2]), {}, idempotency_key="k1")
stores.queue.enqueue([make_task(stores.clock, max_attempts=1)])
first = stores.queue.lease("lib", 30)
stores.queue.ack(first, {"ok": True})
second = stores.queue.lease("lib", 30)
stores.queue.dead_letter(second, Failure("boom"))
stores.queue.flush()
assert stores.dlq.purge(second.task_id)
"""


@pytest.mark.parametrize("umask", UMASKS, ids=lambda m: f"umask-{m:03o}")
def test_a_program_importing_tracemind_gets_the_same_modes_under_its_own_umask(
    flows: FlowFiles, data_root: Path, umask: int
) -> None:
    # Given a Python program that uses the stores directly and never sets its umask
    ok = flows.write("ok", "tracemind.steps.echo")
    code = textwrap.dedent(LIBRARY_PROGRAM)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS_DIR), *sys.path]))
    # When it enqueues (with a key), leases and acks, dead-letters and purges under `umask`
    script = f'umask {umask:03o} && exec "$0" -c "$1" "$2" "$3"'
    proc = subprocess.run(
        ["sh", "-c", script, sys.executable, code, str(data_root), str(ok)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    # Then what it created has the modes `tm` gives it
    wrong, holders = _modes(data_root)
    assert wrong == {}
    assert {"idempotency/keys", "idempotency/locks", "dlq/purged"} <= holders
    assert any(holder.startswith("queue/done/") for holder in holders)


def test_a_write_pays_no_chmod_under_the_umask_tracemind_runs_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the stores' writer, with os.fchmod counted
    from tracemind import fsutil

    calls: list[int] = []
    real_fchmod = os.fchmod

    def counting_fchmod(fd: int, mode: int) -> None:
        calls.append(mode)
        real_fchmod(fd, mode)

    monkeypatch.setattr(os, "fchmod", counting_fchmod)
    tmp = fsutil.ensure_dir(tmp_path / "tmp")
    old_umask = os.umask(0o022)
    monkeypatch.setattr(fsutil, "_umask_cache", [])
    try:
        # When ten files are written under the process umask of `tm` (007)...
        fsutil.share_with_group()
        items = [(tmp_path / f"a{i}", b"x") for i in range(10)]
        fsutil.write_many_atomic(items, tmp_dir=tmp, durable=False)
        fsutil.write_atomic(tmp_path / "b", b"x", tmp_dir=tmp, durable=False)
        unchmodded = len(calls)
        # ... and ten under a library caller's 022
        os.umask(0o022)
        fsutil._umask_cache[:] = []
        items = [(tmp_path / f"c{i}", b"x") for i in range(10)]
        fsutil.write_many_atomic(items, tmp_dir=tmp, durable=False)
    finally:
        os.umask(old_umask)
    # Then only the latter paid an fchmod (one per file), and all have the same mode
    assert unchmodded == 0
    assert calls == [FILE_MODE] * 10
    modes = {stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir() if p.is_file()}
    assert modes == {FILE_MODE}


def test_a_directory_another_process_creates_at_the_same_moment_is_used_as_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given another uid that creates data/queue between our check and our mkdir
    from tracemind import fsutil

    target = tmp_path / "data" / "queue" / "pending"
    theirs = tmp_path / "data" / "queue"
    real_mkdir, real_chmod = os.mkdir, os.chmod

    def racing_mkdir(path: Any, *args: Any) -> None:
        if Path(path) == theirs:
            real_mkdir(path, *args)
            raise FileExistsError(17, "File exists", str(path))
        real_mkdir(path, *args)

    def chmod(path: Any, mode: int) -> None:
        if Path(path) == theirs:
            raise PermissionError(1, "Operation not permitted", str(path))  # not the owner
        real_chmod(path, mode)

    monkeypatch.setattr(os, "mkdir", racing_mkdir)
    monkeypatch.setattr(os, "chmod", chmod)
    # When we ensure the deeper directory
    fsutil.ensure_dir(target)
    # Then it exists, and only the directories we created were given our mode
    assert target.is_dir()
    assert stat.S_IMODE(target.stat().st_mode) == DIR_MODE
    assert stat.S_IMODE((tmp_path / "data").stat().st_mode) == DIR_MODE


def test_a_lock_file_is_created_0660_and_an_existing_one_opened_as_it_is(tmp_path: Path) -> None:
    from tracemind import fsutil

    old_umask = os.umask(0o077)
    try:
        fsutil._umask_cache[:] = []
        # A missing lock file is created 0660 under umask 077...
        os.close(fsutil.open_or_create(tmp_path / "new.lock", os.O_RDWR))
        # ... one that exists keeps its mode...
        (tmp_path / "old.lock").touch(mode=0o640)
        (tmp_path / "old.lock").chmod(0o640)
        os.close(fsutil.open_or_create(tmp_path / "old.lock", os.O_RDONLY))
        # ... and a dangling symlink is an error, not a file created where it points
        (tmp_path / "dangling.lock").symlink_to(tmp_path / "elsewhere")
        with pytest.raises(FileNotFoundError):
            fsutil.open_or_create(tmp_path / "dangling.lock", os.O_RDWR)
    finally:
        os.umask(old_umask)
        fsutil._umask_cache[:] = []
    assert stat.S_IMODE((tmp_path / "new.lock").stat().st_mode) == FILE_MODE
    assert stat.S_IMODE((tmp_path / "old.lock").stat().st_mode) == 0o640
    assert not (tmp_path / "elsewhere").exists()
