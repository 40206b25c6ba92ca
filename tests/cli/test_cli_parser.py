"""The table of contents of ``tm`` (``tracemind.cli.parser.COMMANDS``) against the groups' parsers:
``tm --help`` shows the table without importing the groups, so the two must agree."""

from __future__ import annotations

import argparse

import pytest

from tracemind.cli.parser import COMMANDS, build_parser


def _commands_of(parser: argparse.ArgumentParser) -> list[str]:
    [subparsers] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return list(subparsers.choices)


@pytest.mark.parametrize("command", COMMANDS)
def test_each_group_registers_the_commands_the_table_gives_it(command: str) -> None:
    group, _ = COMMANDS[command]

    registered = _commands_of(build_parser(command))

    assert registered == [name for name, (g, _) in COMMANDS.items() if g == group]


def test_help_lists_every_command_with_its_summary(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # one line per command

    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["--help"])

    assert exited.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    for name, (_, summary) in COMMANDS.items():
        assert any(line.split() == [name, *summary.split()] for line in lines), name
