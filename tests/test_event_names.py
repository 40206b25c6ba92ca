"""One style of log event name across the code: a short lowercase sentence ("worker started",
"trigger event submitted"), never an identifier ("trigger_event_submitted"); details go into
keys. An aggregator can then match events by name whatever part of TraceMind logged them."""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "tracemind"
LOG_METHODS = {"debug", "info", "warning", "error", "exception", "critical"}
SENTENCE = re.compile(r"[a-z][a-z0-9]*( [a-z0-9(][^_\n]*)+")


def _event_names() -> list[tuple[str, str]]:
    """(where, event) for every logging call in src/ whose event is a string literal."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in LOG_METHODS
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                found.append((f"{path.relative_to(SRC)}:{node.lineno}", node.args[0].value))
    return found


def test_every_event_name_is_a_lowercase_sentence() -> None:
    names = _event_names()
    assert len(names) > 40, "the scan no longer finds the logging calls"
    offenders = [
        (where, event)
        for where, event in names
        if not SENTENCE.fullmatch(event) or event.endswith(".")
    ]
    assert offenders == []
