"""The verbs a new user reaches for first, as real ``tm`` processes: standard input for ``-i``
and ``--inputs``, ``--step``, ``--delay``/``--at`` checks, ``tm init``, ``tm completion`` and the
progress line of ``tm task wait`` (only on a terminal)."""

from __future__ import annotations

import json
import os
import pty
import subprocess
from pathlib import Path

import pytest

from tm_testing import FlowFiles, Tm, files_under, task_record, tm_command
from tracemind import Client

TASK_ID = "0123456789abcdef012345"
HELLO = Path(__file__).resolve().parents[2] / "examples" / "flows" / "hello.yaml"


def _task(data_root: Path, task_id: str) -> dict[str, object]:
    [path] = [p for p in (data_root / "queue" / "pending").rglob("*") if task_id in p.name]
    return task_record(path)


def test_dash_reads_the_input_from_stdin(tm: Tm, data_root: Path) -> None:
    proc = subprocess.run(
        [*tm_command(), "enqueue", HELLO, "-i", "-", "--json"],
        input='{"name": "from stdin"}',
        env=tm.env, cwd=tm.cwd, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip

    assert proc.returncode == 0, proc.stderr
    task_id = json.loads(proc.stdout)["task_id"]
    assert _task(data_root, task_id)["input"] == {"name": "from stdin"}


def test_dash_reads_a_batch_from_stdin(tm: Tm, data_root: Path) -> None:
    proc = subprocess.run(
        [*tm_command(), "enqueue", HELLO, "--inputs", "-", "--idempotency-key-field", "k",
         "--json"],
        input='{"k": "a"}\n\n{"k": "b"}\n{"k": "a"}\n',
        env=tm.env, cwd=tm.cwd, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip

    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert (summary["enqueued"], summary["duplicates"]) == (2, 1)


def test_bad_stdin_is_one_line_naming_it(tm: Tm, data_root: Path) -> None:
    proc = subprocess.run(
        [*tm_command(), "run", HELLO, "-i", "-"],
        input="[1, 2]",
        env=tm.env, cwd=tm.cwd, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip

    assert proc.returncode == 2
    assert proc.stderr.strip() == "tm: error: -i -: must be a JSON object, got list"


def test_step_enqueues_a_one_step_flow_around_the_hook(tm: Tm, data_root: Path) -> None:
    out = tm.json("enqueue", "--step", "tracemind.steps.greet", "-i", '{"name": "x"}', "--json")

    record = _task(data_root, out["task_id"])
    assert record["flow_id"] == "tracemind.steps.greet"
    flow = record["flow"]["flow"]  # type: ignore[index]
    assert [s["kind"] for s in flow["steps"]] == ["task", "finish"]
    assert flow["steps"][0]["hooks"] == {"run": "tracemind.steps.greet"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--step", "a.b", str(HELLO)], "give FLOW or --step HOOK, not both"),
        ([], "FLOW (a flow file) or --step HOOK is required"),
        (["--step", "nodots"], "must look like 'pkg.module.func'"),
        (["--step", "no_such_pkg_x.fn"], "cannot import 'no_such_pkg_x'"),
        ([str(HELLO), "--delay", "soon"], "--delay 'soon': expected a duration"),
        ([str(HELLO), "--delay", "99999d"], "a delay must be from 0"),
        ([str(HELLO), "--at", "2026-12-24T18:00:00"], "give a time zone"),
        ([str(HELLO), "--at", "christmas"], "expected an ISO-8601 time"),
        ([str(HELLO), "--app-dir", "/no/such/dir"], "--app-dir /no/such/dir: not a directory"),
    ],
)
def test_bad_step_times_and_app_dirs_are_one_line_and_enqueue_nothing(
    tm: Tm, data_root: Path, args: list[str], message: str
) -> None:
    proc = tm("enqueue", *args)

    assert proc.returncode == 2, proc.stderr
    [line] = proc.stderr.splitlines()
    assert line.startswith("tm: error: ") and message in line
    assert not data_root.exists(), files_under(data_root)


def test_delay_is_recorded_as_the_due_time(tm: Tm, data_root: Path) -> None:
    task_id = tm.json("enqueue", HELLO, "--delay", "2h", "--json")["task_id"]

    view = tm.json("task", "show", task_id, "--json")
    info = Client(data_root).get(task_id)
    assert view["status"] == "delayed" and view["due_at"] > view["enqueued_at"]
    assert info is not None and info.due_s is not None and info.enqueued_at_s is not None
    assert abs(info.due_s - (info.enqueued_at_s + 7200)) < 5


def test_init_writes_a_starter_that_runs_from_its_directory(tm: Tm, tmp_path: Path) -> None:
    proc = tm("init", "starter", "--json")

    assert proc.returncode == 0, proc.stderr
    written = json.loads(proc.stdout)["written"]
    assert sorted(Path(p).relative_to("starter").as_posix() for p in written) == [
        "README.md",
        "flows/hello.yaml",
        "steps/__init__.py",
        "steps/hello.py",
        "triggers.yaml",
    ]
    env = {k: v for k, v in tm.env.items() if k not in ("PYTHONPATH", "TM_APP_DIR")}
    run = subprocess.run(
        [*tm_command(), "run", "flows/hello.yaml", "-i", '{"name": "Ada"}'],
        cwd=tmp_path / "starter", env=env, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == {"name": "Ada", "greeting": "Hello, Ada!"}


def test_init_refuses_to_overwrite_and_writes_nothing(tm: Tm, tmp_path: Path) -> None:
    # Given a directory where one of the starter's files already exists
    (tmp_path / "starter" / "steps").mkdir(parents=True)
    (tmp_path / "starter" / "steps" / "hello.py").write_text("# mine\n")

    # When tm init targets it
    proc = tm("init", "starter")

    # Then it exits 2 naming the file, and wrote nothing at all
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "tm: error: starter/steps/hello.py already exists; nothing was written "
        "(tm init never overwrites)"
    )
    assert files_under(tmp_path / "starter") == ["steps", "steps/hello.py"]
    assert (tmp_path / "starter" / "steps" / "hello.py").read_text() == "# mine\n"


def _complete(script: str, line: str) -> list[str]:
    """What the bash completion ``script`` offers for the command line ``line``."""
    driver = (
        f"{script}\n"
        f"read -ra COMP_WORDS <<< {json.dumps(line)}\n"
        f'[[ {json.dumps(line)} == *" " ]] && COMP_WORDS+=("")\n'
        "COMP_CWORD=$((${#COMP_WORDS[@]} - 1))\n"
        "_tm_completion\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    proc = subprocess.run(
        ["bash", "--norc", "-c", driver], capture_output=True, text=True, timeout=30, check=True
    )
    return proc.stdout.split()


def test_bash_completion_offers_commands_verbs_and_options(tm: Tm) -> None:
    script = tm("completion", "bash").stdout

    assert "init" in _complete(script, "tm ") and "completion" in _complete(script, "tm ")
    assert _complete(script, "tm task ") == ["show", "wait", "ls", "cancel"]
    assert _complete(script, "tm enqueue --de") == ["--delay"]
    assert _complete(script, "tm daemon start --app") == ["--app-dir"]
    assert _complete(script, "tm completion z") == ["zsh"]


def test_zsh_completion_loads_the_bash_function_through_bashcompinit(tm: Tm) -> None:
    proc = tm("completion", "zsh")

    assert proc.returncode == 0
    assert (
        "bashcompinit" in proc.stdout
        and "complete -o filenames -F _tm_completion tm" in proc.stdout
    )


def _stderr_on_a_terminal(
    tm: Tm, args: list[str], env: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """Run ``tm ARGS`` with stderr on a pseudo-terminal; its exit code and what it wrote there."""
    leader, follower = pty.openpty()
    try:
        proc = subprocess.run(
            [*tm_command(), *args], env={**tm.env, **(env or {})}, cwd=tm.cwd,
            stdout=subprocess.PIPE, stderr=follower, timeout=60, check=False,
        )  # fmt: skip
        os.close(follower)
        seen = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO once the writer is gone and everything was read
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(leader)
    return proc.returncode, seen


def test_task_wait_shows_progress_only_on_a_terminal(tm: Tm) -> None:
    task_id = tm.json("enqueue", HELLO, "--json")["task_id"]

    code, seen = _stderr_on_a_terminal(tm, ["task", "wait", task_id, "--timeout", "1.5"])
    assert code == 3
    assert b"waiting: 0 of 1 finished" in seen

    piped = tm("task", "wait", task_id, "--timeout", "0.3")
    assert piped.returncode == 3 and piped.stderr == ""


def test_a_batch_over_a_second_shows_progress_only_on_a_terminal(tm: Tm, tmp_path: Path) -> None:
    # Given a flow whose hook module takes 1.5 s to import (validation takes that long)
    slow = tmp_path / "slowmods"
    slow.mkdir()
    (slow / "slow_to_import.py").write_text(
        "import time\ntime.sleep(1.5)\n\ndef work(ctx, state):\n    return {}\n"
    )
    batch = tmp_path / "batch.jsonl"
    batch.write_text('{"n": 1}\n{"n": 2}\n')
    env = {"TM_FLOW_CACHE": "0"}
    args = ["enqueue", "--step", "slow_to_import.work", "--inputs", str(batch)]
    args += ["--app-dir", str(slow)]

    code, seen = _stderr_on_a_terminal(tm, args, env)
    assert code == 0
    assert b"enqueue: validating the flow; 2 inputs read" in seen

    piped = tm(*args, env=env)
    assert piped.returncode == 0 and "enqueue:" not in piped.stderr  # (no progress line)


def test_enqueue_into_a_queue_nobody_serves_says_so_on_stderr(tm: Tm, flows: FlowFiles) -> None:
    # Given a queue no daemon or pool serves
    flow = flows.write("echo", "tracemind.steps.echo")
    # When a task is enqueued, Then it is durable (exit 0) and one line says nobody serves it
    proc = tm("enqueue", flow, "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["task_id"]
    assert proc.stderr.count("\n") == 1 and "no daemon or worker pool serves" in proc.stderr
