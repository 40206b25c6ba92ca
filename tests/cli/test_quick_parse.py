"""The quick forms of ``tm run`` and ``tm enqueue`` (parsed without argparse) against argparse.

Whatever ``parse_quick`` accepts, argparse must read the same way; everything else it must leave
to argparse. The forms' option tables must match what ``register`` declares.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import random
from typing import Any

import pytest

from tracemind.cli.main import QUICK_COMMANDS, parse_quick
from tracemind.cli.parser import build_parser
from tracemind.cli.submit import QUICK_FORMS

JSON = '{"n": 1}'

QUICK = [
    ["enqueue", "f.yaml"],
    ["enqueue", "f.yaml", "-i", JSON],
    ["enqueue", "f.yaml", "--input", JSON, "--json"],
    ["enqueue", "-i", JSON, "f.yaml"],
    ["enqueue", "--json", "f.yaml", "--json"],
    ["enqueue", "f.yaml", "-i", "", "--idempotency-key", "k 1"],
    ["enqueue", "f.yaml", "--queue-dir", "q", "--idempotency-dir", "i", "--dlq-dir", "d"],
    ["enqueue", "enqueue", "-i", "@in.json"],
    ["enqueue", "f.yaml", "--inputs", "in.jsonl"],
    ["enqueue", "f.yaml", "--inputs", "in.jsonl", "--idempotency-key-field", "id", "--json"],
    ["enqueue", "f.yaml", "-i", JSON, "--idempotency-key-field", "id"],
    ["--debug", "enqueue", "f.yaml", "-i", JSON],
    ["run", "f.yaml"],
    ["run", "f.yaml", "-i", JSON],
    ["run", "f.yaml", "--detached", "-i", JSON, "--json", "--idempotency-key", "k"],
    ["run", "f.yaml", "--detached", "--queue-dir", "/q", "--dlq-dir", "/d"],
    ["--debug", "run", "--detached", "f.yaml"],
    ["enqueue", "--step", "pkg.mod.fn", "-i", JSON],
    ["enqueue", "--step", "pkg.mod:fn", "--inputs", "in.jsonl", "--json"],
    ["enqueue", "f.yaml", "--delay", "5m"],
    ["enqueue", "f.yaml", "--at", "2026-12-24T18:00:00Z", "--idempotency-key", "k"],
    ["enqueue", "f.yaml", "--app-dir", "a", "--app-dir", "b"],
    ["run", "f.yaml", "--app-dir", "a", "-i", JSON],
]

LEFT_TO_ARGPARSE = [
    [],
    ["--debug"],
    ["--version"],
    ["-h"],
    ["enqueue"],
    ["enqueue", "--help"],
    ["enqueue", "f.yaml", "-h"],
    ["enqueue", "f.yaml", "-i"],
    ["enqueue", "f.yaml", "-i", "-1"],
    ["enqueue", "f.yaml", "-i{}"],
    ["enqueue", "f.yaml", "--input={}"],
    ["enqueue", "f.yaml", "--inp", JSON],
    ["enqueue", "f.yaml", "--idempotency", "k"],
    ["enqueue", "f.yaml", "-i", JSON, "-i", JSON],
    ["enqueue", "f.yaml", "-i", JSON, "--input", JSON],
    ["enqueue", "f.yaml", "--inputs", "in.jsonl", "-i", JSON],
    ["enqueue", "f.yaml", "--input", JSON, "--inputs", "in.jsonl"],
    ["enqueue", "f.yaml", "--inputs", "a.jsonl", "--inputs", "b.jsonl"],
    ["enqueue", "f.yaml", "g.yaml"],
    ["enqueue", "f.yaml", "--", "-i"],
    ["enqueue", "-", "-i", JSON],
    ["enqueue", "f.yaml", "--debug"],
    ["enqueue", "f.yaml", "--detached"],
    ["enqueue", "f.yaml", "--queue-dir", "--json"],
    ["run", "f.yaml", "--json=1"],
    ["run", "f.yaml", "--state-dir", "s"],
    ["--debug", "--debug", "run", "f.yaml"],
    ["--version", "run", "f.yaml"],
    ["queue", "stats"],
    ["daemon", "ps"],
    ["frobnicate"],
    ["enqueue", "f.yaml", "-i", "-"],
    ["enqueue", "f.yaml", "--inputs", "-"],
    ["enqueue", "f.yaml", "--delay", "1s", "--at", "2026-01-01T00:00:00Z"],
    ["enqueue", "--step", "m.f", "--step", "m.g"],
    ["enqueue", "f.yaml", "--app-dir"],
    ["enqueue", "f.yaml", "--app-dir", "--json"],
    ["run", "--app-dir", "a"],
]


def _argparse(words: list[str]) -> dict[str, Any] | str:
    """What argparse makes of ``words``: the parsed attributes, or how it exited."""
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            return vars(build_parser(_command(words)).parse_args(words))
    except SystemExit as exit:
        return f"exit {exit.code}"


def _command(words: list[str]) -> str | None:
    return next((w for w in words if not w.startswith("-")), None)


@pytest.mark.parametrize("words", QUICK, ids=" ".join)
def test_quick_form_reads_what_argparse_reads(words: list[str]) -> None:
    quick = parse_quick(words)

    assert quick is not None
    assert vars(quick) == _argparse(words)


@pytest.mark.parametrize("words", LEFT_TO_ARGPARSE, ids=lambda w: " ".join(w) or "(none)")
def test_anything_else_is_left_to_argparse(words: list[str]) -> None:
    assert parse_quick(words) is None


TOKENS = [
    *["run", "enqueue", "f.yaml", "g.json", "", "-", "--", "k", JSON, "-1", "-x"],
    *["-i", "--input", "--inputs", "--json", "--detached", "--debug", "-h", "--inp"],
    *["--idempotency-key", "--idempotency-key-field", "--queue-dir", "--dlq-dir", "--q"],
    *["--step", "m.f", "--delay", "5m", "--at", "--app-dir"],
]


def test_random_command_lines_read_alike() -> None:
    rng = random.Random(20261126)
    accepted = 0
    for _ in range(3000):
        words = [rng.choice(["run", "enqueue"])]
        words += rng.choices(TOKENS, k=rng.randint(0, 7))
        if rng.random() < 0.2:
            words.insert(0, "--debug")
        quick = parse_quick(words)
        if quick is not None:
            accepted += 1
            assert vars(quick) == _argparse(words), words
    assert accepted > 100  # the corpus exercises the quick forms, not only the fallback


def test_every_quick_form_matches_the_options_register_declares() -> None:
    assert set(QUICK_FORMS) == set(QUICK_COMMANDS)
    commands = build_parser("run")._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for name, form in QUICK_FORMS.items():
        parser: argparse.ArgumentParser = commands[name]
        actions = [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]
        takes_value = {s: a.dest for a in actions for s in a.option_strings if a.nargs is None}
        switches = {
            s: a.dest
            for a in actions
            for s in a.option_strings
            if isinstance(a, argparse._StoreTrueAction)
        }
        appends = {
            s: a.dest
            for a in actions
            for s in a.option_strings
            if isinstance(a, argparse._AppendAction)
        }
        [positional] = [a.dest for a in actions if not a.option_strings]

        assert form.positional == positional
        assert form.switches == switches
        assert form.appends == appends
        # The quick form may leave options to argparse, never add or rename one.
        assert form.options.items() <= takes_value.items()
        defaults = form.parse(["f.yaml"])
        assert defaults is not None
        assert defaults == {a.dest: a.default for a in actions} | {
            "flow": "f.yaml",
            "handler": parser.get_default("handler"),
        }
