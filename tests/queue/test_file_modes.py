"""Shared with other uids: everything ``tm`` creates is group-writable, directories setgid, even
under a 022 umask (a host user and a container user in one group both write)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tm_testing import FlowFiles, Tm

GROUP_WRITE = stat.S_IWGRP


def _under_umask_022(tm: Tm, *args: str | Path) -> subprocess.CompletedProcess[str]:
    command = " ".join(f"'{a}'" for a in tm.command(args))
    return subprocess.run(
        ["sh", "-c", f"umask 022 && exec {command}"],
        env=tm.env,
        cwd=tm.cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.slow
def test_files_and_directories_are_group_writable_and_directories_setgid(
    tm: Tm, flows: FlowFiles, data_root: Path
) -> None:
    # Given a succeeding and a dead task submitted (with keys) and run under umask 022
    ok = flows.write("ok", "tracemind.steps.echo")
    bad = flows.write("bad", "tracemind.steps.fail", retry={"max_attempts": 1})
    for flow, key in ((ok, "k1"), (bad, "k2")):
        assert _under_umask_022(tm, "enqueue", flow, "--idempotency-key", key).returncode == 0
    run = _under_umask_022(tm, "workers", "start", "--burst", "--lease-s", "5")
    assert run.returncode == 0, run.stdout + run.stderr
    stats = json.loads(_under_umask_022(tm, "queue", "stats", "--json").stdout)
    assert (stats["pending"], stats["dead"]) == (0, 1)
    assert _under_umask_022(tm, "dlq", "purge", "--all").returncode == 0
    # Then every file and directory created is group-writable, every directory setgid
    paths = [data_root, *data_root.rglob("*")]
    kinds = {p.parent.name for p in paths if p.is_file()}
    assert {"done", "keys", "locks", "purged"} <= kinds
    not_shared = [str(p) for p in paths if not p.stat().st_mode & GROUP_WRITE]
    assert not_shared == []
    not_setgid = [str(p) for p in paths if p.is_dir() and not p.stat().st_mode & stat.S_ISGID]
    assert not_setgid == []


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
    assert target.stat().st_mode & stat.S_ISGID
    assert (tmp_path / "data").stat().st_mode & stat.S_ISGID
