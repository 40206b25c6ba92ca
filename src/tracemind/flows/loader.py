"""Read a flow file (YAML or JSON), validate it and snapshot it.

``yaml`` is imported only when a YAML file is parsed. ``tm enqueue`` comes here only when its
snapshot cache (:mod:`tracemind.flows.cache`) has nothing valid for the file.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from tracemind.errors import FlowError
from tracemind.flows.snapshot import FlowSnapshot
from tracemind.flows.validation import one_line, parse_flow

_JSON_SUFFIXES = frozenset({".json"})


def load_flow(path: str | os.PathLike[str], *, check_hooks: bool = True) -> FlowSnapshot:
    """Read, parse and validate the flow file at ``path`` and return its snapshot.

    ``.json`` files are parsed as JSON, anything else (``.yaml``, ``.yml``, no suffix) as YAML,
    which also accepts JSON. With ``check_hooks`` every hook is imported now, with the current
    directory importable. Every failure (missing or unreadable file, syntax error, invalid flow)
    raises :class:`FlowError` with a one-line message naming ``path`` as given.
    """
    shown = os.fspath(path)
    return snapshot_bytes(_read_bytes(shown), shown, check_hooks=check_hooks)


def snapshot_bytes(data: bytes, path: str, *, check_hooks: bool = True) -> FlowSnapshot:
    """Parse and validate ``data``, the content of the flow file at ``path``, and snapshot it
    (see :func:`load_flow`)."""
    doc = parse_document(data, path)
    flow = parse_flow(doc, path, check_hooks=check_hooks)
    return FlowSnapshot.of(flow, os.path.abspath(path), hashlib.sha256(data).hexdigest())


def parse_document(data: bytes, path: str) -> Any:
    """Decode ``data`` (UTF-8, BOM allowed) and parse it by ``path``'s suffix; FlowError if bad."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise FlowError(path, f"not UTF-8 text (bad byte at offset {exc.start})") from None
    if os.path.splitext(path)[1].lower() in _JSON_SUFFIXES:
        return _parse_json(text, path)
    return _parse_yaml(text, path)


def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except FileNotFoundError:
        raise FlowError(path, "file not found") from None
    except IsADirectoryError:
        raise FlowError(path, "is a directory, not a flow file") from None
    except PermissionError:
        raise FlowError(path, "permission denied") from None
    except OSError as exc:
        raise FlowError(path, f"cannot read file: {exc.strerror or exc}") from None


def _parse_json(text: str, path: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise FlowError(
            path, f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None


def _parse_yaml(text: str, path: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "syntax error"
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise FlowError(path, one_line(f"invalid YAML{where}: {problem}")) from None
    except yaml.YAMLError as exc:
        raise FlowError(path, one_line(f"invalid YAML: {exc}")) from None
