"""Text that is not valid Unicode — a lone surrogate escaped in JSON (``\\ud800``), or command-line
bytes that are not UTF-8 (Python hands them over as lone surrogates) — is bad input: one line on
stderr, exit 2, nothing created, on both the quick path and argparse's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tm_testing import ECHO_FLOW, Tm, files_under, task_record
from tracemind.cli.main import parse_quick

LONE = r'{"u": "\ud800"}'
"""What the shell passes for ``-i '{"u":"\\ud800"}'``: a JSON escape of a lone surrogate."""
NOT_UTF8 = b"\xff\xfe".decode("utf-8", "surrogateescape")
"""What Python makes of the argument bytes ``$'\\xff\\xfe'``."""
DAEMON_ON = {"TM_ENABLE_DAEMON": "1"}


@pytest.fixture
def flow(tmp_path: Path) -> Path:
    path = tmp_path / "echo.json"
    path.write_text(json.dumps(ECHO_FLOW))
    (tmp_path / "lone.jsonl").write_text('{"n": 1}\n' + LONE + "\n")
    (tmp_path / "lone-key.jsonl").write_text('{"k": "a"}\n{"k": "\\udc00"}\n')
    return path


QUICK = [
    (["enqueue", "{flow}", "-i", LONE], "-i: \\ud800 is a lone surrogate"),
    (["run", "{flow}", "-i", LONE], "-i: \\ud800 is a lone surrogate"),
    (["run", "{flow}", "--detached", "-i", LONE], "-i: \\ud800 is a lone surrogate"),
    (["enqueue", "{flow}", "-i", '{"u": "' + NOT_UTF8 + '"}'], "-i: not valid UTF-8 text"),
    (["enqueue", "{flow}", "--idempotency-key", NOT_UTF8], "--idempotency-key: not valid UTF-8"),
    (
        ["run", "{flow}", "--detached", "--idempotency-key", NOT_UTF8],
        "--idempotency-key: not valid UTF-8",
    ),
    (["enqueue", "{flow}", "--inputs", "lone.jsonl"], "lone.jsonl:2: \\ud800 is a lone"),
    (
        ["enqueue", "{flow}", "--inputs", "lone-key.jsonl", "--idempotency-key-field", "k"],
        "lone-key.jsonl:2: \\udc00 is a lone",
    ),
]
FULL = [
    (["enqueue", "{flow}", "--input=" + LONE], "-i: \\ud800 is a lone surrogate"),
    (["run", "{flow}", "--detached", "--input=" + LONE], "-i: \\ud800 is a lone surrogate"),
    (["enqueue", "{flow}", "--idempotency-key=" + NOT_UTF8], "--idempotency-key: not valid"),
    (
        ["run", "{flow}", "--detached", "--idempotency-key=" + NOT_UTF8],
        "--idempotency-key: not valid",
    ),
]


def _case_id(case: tuple[list[str], str]) -> str:
    return " ".join(case[0]).encode("ascii", "backslashreplace").decode()


@pytest.mark.parametrize("quick", [True, False], ids=["quick", "argparse"])
def test_the_cases_take_the_path_they_claim(quick: bool) -> None:
    for args, _ in QUICK if quick else FULL:
        assert (parse_quick(args) is not None) is quick, args


@pytest.mark.parametrize(("args", "message"), QUICK + FULL, ids=[_case_id(c) for c in QUICK + FULL])
def test_invalid_text_is_one_line_exit_2(
    tm: Tm, flow: Path, data_root: Path, args: list[str], message: str
) -> None:
    proc = tm(*[a.replace("{flow}", str(flow)) for a in args], env=DAEMON_ON)

    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    [line] = proc.stderr.splitlines()
    assert line.startswith("tm: error: ") and message in line
    assert not data_root.exists(), files_under(data_root)


def test_a_surrogate_pair_is_a_character_and_is_accepted(
    tm: Tm, flow: Path, data_root: Path
) -> None:
    proc = tm("enqueue", flow, "-i", r'{"u": "\ud83d\ude00"}', "--json")

    assert proc.returncode == 0, proc.stderr
    task_id = json.loads(proc.stdout)["task_id"]
    [record] = [
        p for p in (data_root / "queue" / "pending").glob("*/*/*.json") if task_id in p.name
    ]
    assert task_record(record)["input"] == {"u": "\N{GRINNING FACE}"}
