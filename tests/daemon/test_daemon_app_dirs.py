"""Where workers import hooks from: a new user's own module, in a directory of its own, run by a
daemon started somewhere else. Without ``--app-dir`` the task dead-letters with an error that
says where the worker looked and what to do (and ``tm enqueue`` warned); with it, it runs."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from daemon_harness import DaemonEnv

from tm_testing import tm_command

STEPS = """
def work(ctx, state):
    return {"doubled": state["n"] * 2}
"""
FLOW = {
    "flow": {
        "id": "double",
        "steps": [
            {"id": "work", "kind": "task", "hooks": {"run": "mysteps.work"}},
            {"id": "end", "kind": "finish"},
        ],
        "edges": [{"from": "work", "to": "end"}],
    }
}


@pytest.fixture
def project(daemon_env: DaemonEnv) -> Path:
    """The user's project: mysteps.py and flows/double.json, nowhere on PYTHONPATH."""
    root = daemon_env.root / "project"
    (root / "flows").mkdir(parents=True)
    (root / "mysteps.py").write_text(STEPS)
    (root / "flows" / "double.json").write_text(json.dumps(FLOW))
    return root


def _tm(
    daemon_env: DaemonEnv, cwd: Path, *args: str | os.PathLike[str]
) -> subprocess.CompletedProcess[str]:
    """``tm`` from ``cwd``, seeing the daemon's state dir as users do (TM_DAEMON_STATE_DIR)."""
    env = {
        **daemon_env.env,
        "TM_DAEMON_STATE_DIR": str(daemon_env.state_dir),
        "XDG_CACHE_HOME": str(daemon_env.root / "cache"),
    }
    return subprocess.run(
        [*tm_command(), *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _start_elsewhere(daemon_env: DaemonEnv, *args: str) -> Path:
    """Start the daemon from a directory that is not the project (its workers' cwd)."""
    elsewhere = daemon_env.root / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    proc = _tm(daemon_env, elsewhere, "daemon", "start", "--state-dir", daemon_env.state_dir, *args)
    daemon_env.remember(daemon_env.state_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr + daemon_env.log_tail()
    return elsewhere


def test_without_app_dir_the_task_dies_saying_where_the_worker_looked(
    daemon_env: DaemonEnv, project: Path
) -> None:
    # Given a daemon started elsewhere, without --app-dir
    elsewhere = _start_elsewhere(daemon_env, "--workers", "1")

    # When the user enqueues from their project (the hook imports there: validation passes)
    enqueued = _tm(daemon_env, project, "enqueue", "flows/double.json", "-i", '{"n": 2}', "--json")

    # Then the enqueue succeeds with one warning line naming the fix
    assert enqueued.returncode == 0, enqueued.stderr
    [warning] = enqueued.stderr.splitlines()
    assert warning.startswith("tm: warning: the daemon serving this queue")
    assert "cannot import 'mysteps'" in warning and f"--app-dir {project}" in warning
    # And the task dead-letters at once with where the worker looked and what to do
    task_id = json.loads(enqueued.stdout)["task_id"]
    waited = _tm(daemon_env, project, "task", "wait", task_id, "--timeout", "30", "--json")
    assert waited.returncode == 1, waited.stdout + waited.stderr
    view = json.loads(waited.stdout)
    assert view["status"] == "dead" and view["attempts"] == 1
    error = view["error"]
    assert "cannot import 'mysteps'" in error and "\n" not in error
    assert f"looked in {elsewhere}" in error
    assert "--app-dir" in error and "PYTHONPATH" in error


def test_with_app_dir_the_task_runs_and_ps_shows_the_app_dir(
    daemon_env: DaemonEnv, project: Path
) -> None:
    # Given the same daemon started elsewhere, told where the user's modules are
    _start_elsewhere(daemon_env, "--workers", "1", "--app-dir", str(project))

    # When the user enqueues from their project
    enqueued = _tm(daemon_env, project, "enqueue", "flows/double.json", "-i", '{"n": 21}', "--json")

    # Then there is no warning and the task succeeds
    assert enqueued.returncode == 0 and enqueued.stderr == "", enqueued.stderr
    task_id = json.loads(enqueued.stdout)["task_id"]
    view = daemon_env.wait(task_id)
    assert view["result"] == {"n": 21, "doubled": 42}
    # And the daemon recorded its app dirs, which ps shows
    assert daemon_env.meta()["app_dirs"] == [str(project)]  # type: ignore[index]
    assert daemon_env.ps()["app_dirs"] == [str(project)]


def test_tm_app_dir_in_the_environment_works_like_the_flag(
    daemon_env: DaemonEnv, project: Path
) -> None:
    daemon_env.env["TM_APP_DIR"] = str(project)
    _start_elsewhere(daemon_env, "--workers", "1")
    elsewhere = daemon_env.root / "elsewhere"

    # The caller, elsewhere too, imports the hook from TM_APP_DIR to validate the flow
    enqueued = _tm(daemon_env, elsewhere, "enqueue", project / "flows" / "double.json", "--json",
                   "-i", '{"n": 1}')  # fmt: skip

    assert enqueued.returncode == 0, enqueued.stderr
    assert daemon_env.wait(json.loads(enqueued.stdout)["task_id"])["result"]["doubled"] == 2


def test_a_missing_app_dir_is_refused_before_anything_starts(daemon_env: DaemonEnv) -> None:
    proc = daemon_env.start("--app-dir", str(daemon_env.root / "nope"))

    assert proc.returncode == 2
    assert (
        proc.stderr.strip() == f"tm: error: --app-dir {daemon_env.root / 'nope'}: not a directory"
    )
    assert not (daemon_env.state_dir / "daemon.json").exists()


def test_the_init_starter_runs_under_tm_run_and_the_daemon(daemon_env: DaemonEnv) -> None:
    # Given a starter written by tm init
    starter = daemon_env.root / "starter"
    init = _tm(daemon_env, daemon_env.root, "init", starter)
    assert init.returncode == 0, init.stderr

    # Then from inside it, tm run works with no flag or variable
    env_without_paths = {k: v for k, v in daemon_env.env.items() if k != "PYTHONPATH"}
    run = subprocess.run(
        [*tm_command(), "run", "flows/hello.yaml", "-i", "{}"],
        cwd=starter, env=env_without_paths, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == {"greeting": "Hello, world!"}
    # And its triggers file validates, and the daemon runs its flow as its README says
    validated = _tm(daemon_env, starter, "triggers", "validate", "--path", "triggers.yaml")
    assert validated.returncode == 0, validated.stderr
    _start_elsewhere(daemon_env, "--workers", "1", "--app-dir", str(starter))
    enqueued = _tm(daemon_env, starter, "enqueue", "flows/hello.yaml", "-i", '{"name": "Ada"}')
    assert enqueued.returncode == 0 and enqueued.stderr == "", enqueued.stderr
    view = daemon_env.wait(enqueued.stdout.strip())
    assert view["result"] == {"name": "Ada", "greeting": "Hello, Ada!"}
