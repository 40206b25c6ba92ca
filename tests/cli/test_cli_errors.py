"""Bad input for every ``tm`` verb, run as real subprocesses: a clear line on stderr, no
traceback, the documented exit code (2 bad input, 1 otherwise) and nothing created on disk."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tm_testing import Tm, files_under

TASK_ID = "0123456789abcdef012345"


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    """Input files and flows the cases refer to by name, in ``tmp_path/in``."""
    root = tmp_path / "in"
    root.mkdir()
    step = {"id": "work", "kind": "task", "hooks": {"run": "tracemind.steps.echo"}}
    files: dict[str, Any] = {
        "good.json": {"flow": {"id": "good", "steps": [step]}},
        "edge.json": {
            "flow": {"id": "edge", "steps": [step], "edges": [{"from": "work", "to": "nowhere"}]}
        },
        "hook.json": {
            "flow": {
                "id": "hook",
                "steps": [{"id": "work", "kind": "task", "hooks": {"run": "no_such_mod.fn"}}],
            }
        },
        "nohook.json": {"flow": {"id": "nohook", "steps": [{"id": "work", "kind": "task"}]}},
        "list.json": [1, 2],
    }
    for name, doc in files.items():
        (root / name).write_text(json.dumps(doc))
    (root / "torn.json").write_text('{"flow": {"id": "x", "steps": [')
    (root / "torn.yaml").write_text("flow:\n  id: [unclosed\n")
    (root / "array.txt").write_text("[1, 2]")
    (root / "bad.jsonl").write_text('{"n": 1}\n{"n": \n')
    (root / "scalar.jsonl").write_text('{"n": 1}\n42\n')
    (root / "keyless.jsonl").write_text('{"id": "a"}\n{"n": 2}\n')
    (root / "empty.jsonl").write_text("\n\n")
    (root / "binary.json").write_bytes(b"\xff\xfe{}")
    (root / "binary.jsonl").write_bytes(b'{"n": 1}\n\xff\xfe{}\n')
    return root


def _case(args: str, code: int, message: str, **env: str) -> Any:
    return pytest.param(args.split(), code, message, env, id=args)


DAEMON_ON = {"TM_ENABLE_DAEMON": "1"}

# (arguments, exit code, text that the one stderr line must contain, extra environment)
CASES = [
    _case("run in/good.json -i {", 2, "-i: malformed JSON"),
    _case("run in/good.json -i [1]", 2, "-i: must be a JSON object, got list"),
    _case('run in/good.json -i "text"', 2, "must be a JSON object, got str"),
    _case("run in/good.json -i @in/missing.json", 2, "cannot read in/missing.json"),
    _case("run in/good.json -i @in/array.txt", 2, "must be a JSON object"),
    _case("run in/good.json -i @in/binary.json", 2, "in/binary.json is not UTF-8 text"),
    _case("run in/good.json -i @in", 2, "cannot read in (Is a directory)"),
    _case('run in/good.json -i {"a":NaN}', 2, "malformed JSON (NaN is not JSON)"),
    _case('run in/good.json -i {"a":[1e999]}', 2, "malformed JSON (number out of range"),
    _case("run in/missing.yaml", 2, "in/missing.yaml: file not found"),
    _case("run in/edge.json", 2, "in/edge.json"),
    _case("run in/hook.json", 2, "in/hook.json: step 'work'"),
    _case("run in/nohook.json", 2, "in/nohook.json: step 'work'"),
    _case("run in/torn.json", 2, "in/torn.json: invalid JSON"),
    _case("run in/torn.yaml", 2, "in/torn.yaml: invalid YAML"),
    _case("run in/list.json", 2, "in/list.json"),
    _case("run in/good.json --idempotency-key k", 2, "--idempotency-key needs --detached"),
    _case("run in/good.json --detached", 1, "TM_ENABLE_DAEMON"),
    _case("run in/good.json --detached -i {", 1, "TM_ENABLE_DAEMON"),
    _case("run in/good.json --detached -i {", 2, "malformed JSON", **DAEMON_ON),
    _case("run in/hook.json --detached", 2, "step 'work'", **DAEMON_ON),
    _case("enqueue in/good.json -i {", 2, "-i: malformed JSON"),
    _case("enqueue in/good.json -i [1]", 2, "must be a JSON object, got list"),
    _case("enqueue in/good.json -i null", 2, "must be a JSON object, got NoneType"),
    _case("enqueue in/good.json -i @in/missing.json", 2, "cannot read"),
    _case("enqueue in/missing.yaml", 2, "in/missing.yaml: file not found"),
    _case("enqueue in/edge.json", 2, "in/edge.json"),
    _case("enqueue in/hook.json --idempotency-key k", 2, "in/hook.json: step 'work'"),
    _case("enqueue in/torn.json", 2, "invalid JSON"),
    _case("enqueue in/good.json --inputs in/bad.jsonl", 2, "in/bad.jsonl:2: malformed JSON"),
    _case("enqueue in/good.json --inputs in/scalar.jsonl", 2, "scalar.jsonl:2: must be a JSON"),
    _case("enqueue in/good.json --inputs in/missing.jsonl", 2, "cannot read"),
    _case("enqueue in/good.json --inputs in/empty.jsonl", 2, "no input lines"),
    _case("enqueue in/good.json --inputs in/binary.jsonl", 2, "not UTF-8 text"),
    _case('enqueue in/good.json -i {"n":-Infinity}', 2, "-Infinity is not JSON"),
    _case(
        "enqueue in/good.json --inputs in/keyless.jsonl --idempotency-key-field id",
        2,
        "keyless.jsonl:2: no field 'id'",
    ),
    _case("enqueue in/hook.json --inputs in/keyless.jsonl", 2, "step 'work'"),
    _case("enqueue in/good.json --idempotency-key-field id", 2, "needs --inputs"),
    _case(
        "enqueue in/good.json --inputs in/keyless.jsonl --idempotency-key k",
        2,
        "use --idempotency-key-field",
    ),
    _case(f"task show {TASK_ID}", 1, f"task {TASK_ID} not found"),
    _case(f"task wait {TASK_ID} --timeout 1", 2, f"task {TASK_ID} not found"),
    _case(f"task wait {TASK_ID} --timeout -1", 2, "--timeout must not be negative"),
    _case(f"dlq show {TASK_ID}", 1, "not in the dead-letter queue"),
    _case(f"dlq requeue {TASK_ID}", 1, "not in the dead-letter queue"),
    _case(f"dlq purge {TASK_ID}", 1, "not in the dead-letter queue"),
    _case("dlq purge", 2, "give either a task ID or --all"),
    _case("workers start --runtime nope", 2, "expected module:factory"),
    _case("workers start --runtime no_such_mod:make", 2, "cannot import no_such_mod"),
    _case("workers start --runtime tracemind.steps:missing", 2, "no callable 'missing'"),
]

# argparse rejects these itself: it prints its usage, then one "error:" line.
ARGPARSE_CASES = [
    "task show 1234",
    "task wait not-an-id",
    "dlq show zz",
    "dlq requeue 12",
    "workers start -n 0",
    "workers start --lease-s 0",
    "workers start --lease-s soon",
    "enqueue in/good.json -i {} --inputs in/bad.jsonl",
    "frobnicate",
]


def _assert_clean_failure(proc: subprocess.CompletedProcess[str], code: int) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


@pytest.mark.parametrize(("args", "code", "message", "env"), CASES)
def test_bad_input_is_one_line_on_stderr_and_creates_nothing(
    tm: Tm,
    inputs: Path,
    data_root: Path,
    args: list[str],
    code: int,
    message: str,
    env: dict[str, str],
) -> None:
    proc = tm(*args, env=env)

    _assert_clean_failure(proc, code)
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("tm: error: ")
    assert message in line
    assert not data_root.exists(), files_under(data_root)


@pytest.mark.parametrize("args", ARGPARSE_CASES)
def test_arguments_argparse_rejects_exit_2_without_a_traceback(
    tm: Tm, inputs: Path, data_root: Path, args: str
) -> None:
    proc = tm(*args.split())

    _assert_clean_failure(proc, 2)
    assert "error:" in proc.stderr.strip().splitlines()[-1]
    assert not data_root.exists()


@pytest.fixture
def blocked_root(tmp_path: Path) -> Path:
    """A data root below a regular file: nothing can ever be created there."""
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a directory")
    return blocker / "data"


WRITERS = [
    ["enqueue", "in/good.json", "-i", "{}"],
    ["enqueue", "in/good.json", "--idempotency-key", "k"],
    ["enqueue", "in/good.json", "--inputs", "in/keyless.jsonl"],
    ["run", "in/good.json", "--detached", "-i", "{}"],
    ["workers", "start", "--burst"],
]
READERS = [
    ["queue", "stats"],
    ["task", "show", TASK_ID],
    ["task", "wait", TASK_ID, "--timeout", "0"],
    ["dlq", "ls"],
]


@pytest.mark.parametrize("args", WRITERS + READERS, ids=" ".join)
def test_an_unusable_data_directory_is_one_clear_error(
    tm: Tm, inputs: Path, blocked_root: Path, args: list[str]
) -> None:
    proc = tm(*args, env={"TM_DATA_DIR": str(blocked_root), **DAEMON_ON})

    _assert_clean_failure(proc, 1)
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("tm: error: ") and str(blocked_root.parent) in line
    assert "not a directory" in line


def test_tm_run_without_the_daemon_flag_names_the_variable_and_enqueues_nothing(
    tm: Tm, inputs: Path, data_root: Path
) -> None:
    for value in ("", "0", "no", "off", "false"):
        proc = tm("run", "in/good.json", "--detached", env={"TM_ENABLE_DAEMON": value})
        _assert_clean_failure(proc, 1)
        assert "TM_ENABLE_DAEMON" in proc.stderr
    assert not data_root.exists()


def test_debug_shows_the_traceback(tm: Tm, inputs: Path) -> None:
    proc = tm("--debug", "run", "in/missing.yaml")

    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "FlowError" in proc.stderr


@pytest.mark.parametrize(("args", "code", "message", "env"), CASES)
def test_with_json_the_error_is_one_json_object_on_stdout(
    tm: Tm,
    inputs: Path,
    data_root: Path,
    args: list[str],
    code: int,
    message: str,
    env: dict[str, str],
) -> None:
    proc = tm(*args, "--json", env=env)

    assert proc.returncode == code, (proc.stdout, proc.stderr)
    assert proc.stderr == ""
    [line] = proc.stdout.splitlines()
    error = json.loads(line)
    assert set(error) == {"error", "exit"} and error["exit"] == code
    assert message in error["error"] and not error["error"].startswith("tm:")
    assert not data_root.exists(), files_under(data_root)


@pytest.mark.parametrize("args", ARGPARSE_CASES)
def test_with_json_argparse_errors_are_json_too(tm: Tm, inputs: Path, args: str) -> None:
    proc = tm(*args.split(), "--json")

    assert proc.returncode == 2 and proc.stderr == ""
    error = json.loads(proc.stdout)
    assert error["exit"] == 2 and re.search(r"\(see tm( \w+)* --help\)$", error["error"])


def test_every_verb_takes_json_and_reports_errors_with_it() -> None:
    # Every verb of every command takes --json, and a usage error with it is JSON (exit 2).
    import contextlib
    import io

    from tracemind.cli.main import main
    from tracemind.cli.parser import COMMANDS, build_parser, leaf_parsers

    verbs = []
    for command in COMMANDS:
        commands = build_parser(command)._subparsers._group_actions[0]  # type: ignore[union-attr]
        for parser in leaf_parsers(commands):  # type: ignore[arg-type]
            assert any("--json" in a.option_strings for a in parser._actions), parser.prog
            verbs.append(parser.prog.split()[1:])
    assert ["task", "wait"] in verbs and ["init"] in verbs and len(verbs) >= 20
    for verb in verbs:
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exited:
            main([*verb, "--json", "--no-such-option"])
        assert exited.value.code == 2, verb
        error = json.loads(out.getvalue())
        assert error == {"error": error["error"], "exit": 2}, verb
        assert re.search(r"\(see tm( \w+)* --help\)$", error["error"]), verb
