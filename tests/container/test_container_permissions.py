"""Who may write the shared volume: a host user and the container user who share only a group
both write what the other made; a /data the container user cannot write stops the daemon at once
with one line that says what to fix."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import pytest

from tm_testing import tm_command

if TYPE_CHECKING:
    from collections.abc import Callable

    from conftest import Project

pytestmark = [pytest.mark.container]

SHARED_GID = 23100  # the only thing the two users have in common
HOST_UID = 23101  # the host user running `tm`
CONTAINER_UID = 23102  # TM_UID of the container
LOCKED_OUT_UID, LOCKED_OUT_GID = 23201, 23200


def _needs_root() -> None:
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("CI runs the container tests as root; this one must not be skipped")
        pytest.skip("needs root to act as two other users (setpriv, chown)")


def _needs_tm_runnable_as(uid: int, gid: int) -> None:
    """The host user is simulated by running this checkout's ``tm`` as another uid, which works
    only where that uid can reach the checkout (not under a 0700 directory): a property of where
    the tests run, like tests/cli/test_cli_permissions.py's probe, not of the product."""
    probe = subprocess.run(
        [
            "setpriv",
            f"--reuid={uid}",
            f"--regid={gid}",
            "--clear-groups",
            *tm_command(),
            "--version",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if probe.returncode != 0:
        pytest.skip(f"this checkout's tm cannot run as uid {uid} here: {probe.stderr.strip()}")


@pytest.mark.timeout(150)
def test_host_user_and_container_user_sharing_a_group_write_each_others_files(
    make_project: Callable[..., Project],
) -> None:
    _needs_root()
    _needs_tm_runnable_as(HOST_UID, SHARED_GID)
    # Given a data dir owned by neither user: root:G 2770 (docs/deployment.md, "Permissions").
    project = make_project(
        "tmshare",
        uid=CONTAINER_UID,
        gid=SHARED_GID,
        data_owner=(0, SHARED_GID),
        data_mode=0o2770,
    )
    host = (HOST_UID, SHARED_GID)  # `setpriv --reuid --regid --clear-groups`: group G only

    # When the host user enqueues first (creating queue/ and idempotency/ as HOST_UID)...
    first = project.enqueue("sleep.yaml", {"seconds": 0}, as_user=host)
    keyed = project.tm_json(
        "enqueue", str(project.flows / "sleep.yaml"), "-i", '{"seconds": 0}',
        "--idempotency-key", "shared-key-1", as_user=host,
    )  # fmt: skip
    assert (project.data_dir / "queue").stat().st_uid == HOST_UID
    # ... then the container starts (as CONTAINER_UID:G) and runs those tasks, moving files
    # through directories the host user made.
    project.up()
    assert project.wait_task(first, as_user=host)["status"] == "succeeded"
    assert project.wait_task(keyed["task_id"], as_user=host)["status"] == "succeeded"

    # And a task dies in the container (the container writes the DLQ entry)...
    dead = project.enqueue("fail.yaml", {"message": "for the DLQ"}, as_user=host)
    assert project.wait_task(dead, as_user=host)["status"] == "dead"
    assert (project.data_dir / "state").stat().st_uid == CONTAINER_UID
    # ... which the host user can purge (removing and archiving what the container wrote).
    purged = project.tm_json("dlq", "purge", "--all", as_user=host)
    assert purged["purged"] == [dead], purged
    assert project.tm_json("dlq", "ls", as_user=host) == []
    # And the host user can enqueue again and stop the container's daemon through the state
    # dir the container made.
    again = project.enqueue("sleep.yaml", {"seconds": 0}, as_user=host)
    assert project.wait_task(again, as_user=host)["status"] == "succeeded"
    stopped = project.tm("daemon", "stop", "--timeout", "20", as_user=host)
    assert stopped.stdout.startswith("daemon stopped"), stopped.stdout
    assert project.wait_exited(timeout_s=20)["ExitCode"] == 0

    # Then nobody hit a permission error, and everything on the volume is shared with group G
    # and nobody else: files 0660, directories 2770; both users created some of it.
    log = "\n".join(project.logs(stdout=True, stderr=True))
    assert "ermission denied" not in log and "not writable" not in log, log[-3000:]
    owners: set[int] = set()
    for path in project.data_dir.rglob("*"):
        info = path.lstat()
        owners.add(info.st_uid)
        assert info.st_gid == SHARED_GID, f"{path}: group {info.st_gid}"
        expected = 0o2770 if stat.S_ISDIR(info.st_mode) else 0o660
        assert stat.S_IMODE(info.st_mode) == expected, f"{path}: {stat.filemode(info.st_mode)}"
    assert {HOST_UID, CONTAINER_UID} <= owners, owners
    # And a user outside G cannot open the daemon's lock or a task, even where every directory
    # lets others through (each file's own mode keeps them out).
    for path in [project.data_dir, *project.data_dir.rglob("*")]:
        if path.is_dir():
            path.chmod(stat.S_IMODE(path.stat().st_mode) | stat.S_IXOTH)
    done_file = next((project.data_dir / "queue" / "done").glob("*/*.json"))
    secrets = [project.data_dir / "state" / "daemon.lock", done_file]
    opened = subprocess.run(
        [
            "setpriv",
            f"--reuid={LOCKED_OUT_UID}",
            f"--regid={LOCKED_OUT_GID}",
            "--clear-groups",
            sys.executable,
            "-c",
            "import os, sys\nfor p in sys.argv[1:]:\n"
            "    try: os.close(os.open(p, os.O_RDONLY)); print('opened')\n"
            "    except PermissionError: print('denied')",
            *map(str, secrets),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert opened.stdout.split() == ["denied", "denied"], opened.stdout + opened.stderr


@pytest.mark.timeout(180)
def test_unwritable_data_stops_the_daemon_at_once_naming_tm_uid_gid_and_env(
    make_project: Callable[..., Project],
) -> None:
    # Given a data dir the container user cannot write: another user's (a clone made as root),
    # or, when not root, our own made read-only.
    if os.geteuid() == 0:
        project = make_project(
            "tmlocked", uid=LOCKED_OUT_UID, gid=LOCKED_OUT_GID, data_owner=(0, 0), data_mode=0o755
        )
    else:
        project = make_project("tmlocked", uid=os.getuid(), gid=os.getgid(), data_mode=0o555)

    # When compose brings it up and waits for health.
    started = time.monotonic()
    up = project.compose("up", "-d", "--wait", "--no-build", check=False)
    took_s = time.monotonic() - started

    # Then `up --wait` fails fast (no waiting out the health check's 30 s start period: each
    # attempt lives until one health check has read the reason, about 5 s)...
    assert up.returncode != 0, up.stdout + up.stderr
    assert took_s < 30, f"up --wait took {took_s:.1f} s to notice"
    time.sleep(3)  # time for the restart policy to act
    # (Read the state between two attempts: while one runs, Docker reports ExitCode 0.)
    state = project.wait_for(
        "the container to be between attempts",
        lambda: (s := project.state())["Status"] in ("restarting", "exited") and s,
        timeout_s=30,
        interval_s=0.05,
    )
    restarts = project.container().attrs["RestartCount"]
    # ... the daemon exits with status 1, never healthy, and never got as far as starting...
    assert state["ExitCode"] == 1, state
    assert (state.get("Health") or {}).get("Status") != "healthy", state
    stdout = project.logs(stdout=True, stderr=False)
    events = [json.loads(line) for line in stdout]
    assert events and {e["event"] for e in events} == {"daemon failed"}, events
    # ... and each attempt says what to fix in one line (stderr; its JSON twin on stdout).
    stderr = project.logs(stdout=False, stderr=True)
    assert stderr and len(set(stderr)) == 1, stderr
    line = stderr[0]
    for needle in ("TM_UID", "TM_GID", ".env", "/data", "not writable"):
        assert needle in line, line
    assert all(e["level"] == "error" and e["error"] in line for e in events), events
    # ... and the health check said it too (`docker inspect`'s State.Health.Log).
    health_log = (project.state().get("Health") or {}).get("Log") or []
    outputs = [entry["Output"] for entry in health_log]
    assert any("503" in out and events[0]["error"] in out for out in outputs), outputs
    # As documented, `restart: on-failure` retries it (with a growing back-off), which is no
    # unhealthy loop: it never runs.
    assert restarts >= 1, state
    print(f"\n[unwritable /data] up --wait failed after {took_s:.1f} s; {restarts} restarts in 3 s")

    # When the directory is fixed as the line says.
    if os.geteuid() == 0:
        os.chown(project.data_dir, LOCKED_OUT_UID, LOCKED_OUT_GID)
    os.chmod(project.data_dir, 0o2770)

    # Then the next retry comes up healthy by itself, after one error line per failed attempt.
    project.wait_for("the next retry to come up healthy", project.is_healthy, timeout_s=120)
    events = [json.loads(line) for line in project.logs(stdout=True, stderr=False)]
    failed = [e for e in events if e["event"] == "daemon failed"]
    assert len(failed) == len(project.logs(stdout=False, stderr=True)) >= 2
    assert any(e["event"] == "daemon started" for e in events)
