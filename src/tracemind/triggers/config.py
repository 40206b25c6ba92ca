"""Load and validate triggers.yaml (YAML or JSON).

Contract:

- :func:`check_config` never raises for the file's content: it returns every problem as one line
  naming the file and the trigger (``triggers.yaml: trigger 'orders': secret_env: ...``), plus
  warnings (placeholders no event of that kind provides). With a ``flow_loader`` it also loads
  each trigger's flow and reports the loader's :class:`~tracemind.errors.FlowError` as a problem.
- :func:`load_config` returns the validated config or raises :class:`TriggerConfigError`
  (a UsageError: exit 2) carrying all problems.
- Relative ``path:`` and ``flow:`` resolve against the triggers file's directory; ``flow_id:`` is
  an alias of ``flow:``; unknown keys are errors; a webhook's ``secret_env`` is read from
  ``environ`` here, and naming an unset variable is an error.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tracemind.errors import FlowError
from tracemind.triggers.fields import FieldReader
from tracemind.triggers.kinds import CONTEXT_NAMES, read_kind
from tracemind.triggers.model import (
    KINDS,
    AnyTriggerSpec,
    TriggerConfigError,
    TriggersConfig,
    WebhookSpec,
)
from tracemind.triggers.template import is_valid_name, placeholders

FlowLoader = Callable[[Path], object]
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_TOP_KEYS = ("version", "triggers")


@dataclass(frozen=True)
class ConfigReport:
    """What :func:`check_config` found; ``config`` is None when there are problems."""

    config: TriggersConfig | None
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def load_config(path: str | Path, *, environ: Mapping[str, str] | None = None) -> TriggersConfig:
    """The validated config (flows not loaded); raises TriggerConfigError with every problem."""
    report = check_config(path, environ=environ)
    if report.config is None:
        raise TriggerConfigError(report.problems)
    return report.config


def check_config(
    path: str | Path,
    *,
    environ: Mapping[str, str] | None = None,
    flow_loader: FlowLoader | None = None,
) -> ConfigReport:
    """Every problem and warning in a triggers file; see the module docstring."""
    file = Path(path)
    shown = str(path)
    problems: list[str] = []
    warnings: list[str] = []
    data = _read(file, shown, problems)
    if data is None:
        return ConfigReport(None, problems)
    env = os.environ if environ is None else environ
    specs: list[AnyTriggerSpec] = []
    first_label: dict[str, str] = {}
    for index, raw in enumerate(data, start=1):
        label = f"{shown}: trigger #{index}"
        if not isinstance(raw, Mapping):
            problems.append(f"{label}: expected a mapping with id, kind and flow")
            continue
        raw_id = raw.get("id")
        if isinstance(raw_id, str) and _ID.fullmatch(raw_id):
            label = f"{shown}: trigger '{raw_id}'"
            if raw_id in first_label:
                problems.append(f"{label}: duplicate id (also {first_label[raw_id]})")
            first_label.setdefault(raw_id, f"trigger #{index}")
        reader = FieldReader(raw, label, problems)
        spec, flow = _read_trigger(reader, file.parent.absolute(), env)
        if flow is not None and flow_loader is not None:
            _check_flow(flow, flow_loader, label, problems)  # also when other keys are wrong
        if spec is not None:
            _check_templates(spec.input, spec.kind, label, problems, warnings)
            specs.append(spec)
    _check_shared_ports(specs, shown, problems)
    if not data:
        warnings.append(f"{shown}: no triggers defined")
    if problems:
        return ConfigReport(None, problems, warnings)
    return ConfigReport(TriggersConfig(file, tuple(specs), tuple(warnings)), problems, warnings)


def _read(file: Path, shown: str, problems: list[str]) -> list[Any] | None:
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        problems.append(f"{shown}: file not found (create one with `tm triggers init`)")
        return None
    except (OSError, UnicodeDecodeError) as error:
        problems.append(f"{shown}: cannot read: {error}")
        return None
    try:
        data = json.loads(text) if file.suffix == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as error:
        problems.append(f"{shown}: invalid JSON at line {error.lineno}: {error.msg}")
        return None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        reason = getattr(error, "problem", None) or type(error).__name__
        problems.append(f"{shown}: invalid YAML{where}: {reason}")
        return None
    if not isinstance(data, Mapping):
        problems.append(f"{shown}: expected a mapping with 'version: 1' and 'triggers:'")
        return None
    for key in data:
        if key not in _TOP_KEYS:
            problems.append(f"{shown}: unknown top-level key '{key}' (expected version, triggers)")
    if data.get("version", 1) != 1:
        problems.append(f"{shown}: unsupported version {data.get('version')!r} (expected 1)")
    triggers = data.get("triggers")
    if not isinstance(triggers, list):
        problems.append(f"{shown}: 'triggers' must be a list of triggers")
        return None
    return triggers


def _read_trigger(
    reader: FieldReader, base: Path, environ: Mapping[str, str]
) -> tuple[AnyTriggerSpec | None, Path | None]:
    """Read the common keys, then the kind's: (the spec or None when anything is wrong, the
    flow file when it exists)."""
    before = len(reader.problems)
    trigger_id = reader.string("id", required=True)
    if trigger_id is not None and not _ID.fullmatch(trigger_id):
        reader.problem(
            f"id: {trigger_id!r} must be 1-64 letters, digits, '_', '.' or '-', starting with a"
            " letter or digit"
        )
    kind = reader.string("kind", required=True)
    if kind is not None and kind not in KINDS:
        reader.problem(f"kind: unknown kind {kind!r} (expected one of {', '.join(KINDS)})")
        kind = None
    flow = _flow_path(reader, base)
    inputs = reader.mapping("input")
    if kind is None:
        return None, flow  # without a kind, its keys (and so the unknown ones) are unknown too
    build = read_kind(reader, kind, base, environ)
    reader.finish()
    if len(reader.problems) > before or build is None or trigger_id is None or flow is None:
        return None, flow
    return build(trigger_id, flow, inputs), flow


def _flow_path(reader: FieldReader, base: Path) -> Path | None:
    if reader.has("flow") and reader.has("flow_id"):
        reader.problem("flow: give either 'flow' or its alias 'flow_id', not both")
        return None
    key = "flow_id" if reader.has("flow_id") else "flow"
    value = reader.string(key)
    if value is None:
        if not reader.has(key):
            reader.problem("missing required key 'flow' (the flow file to enqueue)")
        return None
    flow = base / Path(value).expanduser()
    if not flow.is_file():
        reader.problem(f"{key}: flow file not found: {value}")
        return None
    return flow


def _check_templates(
    template: dict[str, Any], kind: str, label: str, problems: list[str], warnings: list[str]
) -> None:
    names = CONTEXT_NAMES[kind]
    for where, name in placeholders(template):
        if not is_valid_name(name):
            problems.append(f"{label}: {where}: invalid placeholder {{{{ {name} }}}}")
        elif name.split(".")[0] not in names:
            warnings.append(
                f"{label}: {where}: {kind} events have no '{name.split('.')[0]}';"
                f" {{{{ {name} }}}} renders as null"
            )


def _check_flow(flow: Path, loader: FlowLoader, label: str, problems: list[str]) -> None:
    try:
        loader(flow)
    except FlowError as error:
        problems.append(f"{label}: flow: {error}")


def _check_shared_ports(specs: list[AnyTriggerSpec], shown: str, problems: list[str]) -> None:
    """Webhooks on one host:port share a server: their routes must differ, their hosts agree."""
    seen: dict[tuple[str, int, str], str] = {}
    hosts_by_port: dict[int, tuple[str, str]] = {}
    for spec in specs:
        if not isinstance(spec, WebhookSpec):
            continue
        label = f"{shown}: trigger '{spec.id}'"
        address = (spec.bind_host, spec.bind_port, spec.route)
        if address in seen:
            problems.append(f"{label}: route {spec.route} is already served by '{seen[address]}'")
        seen.setdefault(address, spec.id)
        if spec.bind_port == 0:
            continue
        host, owner = hosts_by_port.setdefault(spec.bind_port, (spec.bind_host, spec.id))
        wildcard = {"0.0.0.0", "::", ""}
        if host != spec.bind_host and (host in wildcard or spec.bind_host in wildcard):
            problems.append(
                f"{label}: {spec.bind_host}:{spec.bind_port} overlaps {host}:{spec.bind_port}"
                f" of '{owner}'; use one bind_host per port"
            )
