"""Loading and validating triggers.yaml: one line per problem, naming the trigger."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tracemind.errors import FlowError, UsageError
from tracemind.triggers import (
    CronSpec,
    FilesystemSpec,
    TriggerConfigError,
    WebhookSpec,
    check_config,
    load_config,
)

FLOW = "flows/hello.yaml"
CRON: dict[str, Any] = {"id": "hourly", "kind": "cron", "cron": "0 * * * *", "flow": FLOW}
FILES: dict[str, Any] = {"id": "ingest", "kind": "filesystem", "path": "incoming", "flow": FLOW}
HOOK: dict[str, Any] = {
    "id": "orders",
    "kind": "webhook",
    "route": "/hooks/orders",
    "secret_env": "TM_WEBHOOK_SECRET",
    "flow": FLOW,
}
ENV = {"TM_WEBHOOK_SECRET": "s3cret"}

WriteConfig = Callable[..., Path]


def problems_of(write_config: WriteConfig, *triggers: dict[str, Any], **kw: Any) -> list[str]:
    report = check_config(write_config(*triggers), environ=kw.get("environ", ENV))
    assert (report.config is None) == bool(report.problems)
    for line in report.problems:
        assert "\n" not in line
    return report.problems


def test_a_valid_file_loads_with_defaults_and_resolved_paths(
    write_config: WriteConfig, project: Path
) -> None:
    config = load_config(write_config(CRON, FILES, HOOK), environ=ENV)
    cron, files, hook = config.triggers
    assert isinstance(cron, CronSpec)
    assert cron.timezone == "UTC"
    assert cron.catch_up is False
    assert cron.flow == project / FLOW
    assert isinstance(files, FilesystemSpec)
    assert files.path == project / "incoming"
    assert files.interval_s == 5.0
    assert files.pattern == "*"
    assert files.recursive is False
    assert files.ignore_existing is False
    assert isinstance(hook, WebhookSpec)
    assert (hook.bind_host, hook.bind_port, hook.method) == ("127.0.0.1", 8081, "POST")
    assert hook.max_body_bytes == 1024 * 1024
    assert hook.secret == "s3cret"
    assert "s3cret" not in repr(hook)


def test_relative_paths_resolve_against_the_triggers_file_not_the_cwd(
    write_config: WriteConfig,
    project: Path,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = write_config(CRON)
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    config = load_config(path, environ={})
    assert config.triggers[0].flow == project / FLOW


def test_json_files_and_flow_id_alias(project: Path) -> None:
    path = project / "triggers.json"
    entry = {**CRON, "flow_id": FLOW}
    del entry["flow"]
    path.write_text(json.dumps({"version": 1, "triggers": [entry]}))
    assert load_config(path, environ={}).triggers[0].flow == project / FLOW


def test_every_monday_is_rejected_naming_the_trigger(write_config: WriteConfig) -> None:
    problems = problems_of(write_config, {**CRON, "id": "weekly", "cron": "every monday"})
    assert len(problems) == 1
    assert problems[0].startswith(f"{write_config()}: trigger 'weekly': cron: ")
    assert "every monday" in problems[0]


@pytest.mark.parametrize(
    ("entry", "fragment"),
    [
        ({**CRON, "timezone": "Europe/Atlantis"}, "timezone: unknown timezone 'Europe/Atlantis'"),
        ({**CRON, "cron": "61 * * * *"}, "cron: minute: 61 is out of range 0-59"),
        ({**CRON, "catch_up": "yes"}, "catch_up: expected true or false"),
        ({**CRON, "schedule": "0 * * * *"}, "unknown key 'schedule'"),
        ({**CRON, "flow": "flows/nope.yaml"}, "flow: flow file not found: flows/nope.yaml"),
        ({**CRON, "flow_id": FLOW}, "give either 'flow' or its alias 'flow_id'"),
        ({**CRON, "input": ["a"]}, "input: expected a mapping"),
        ({**CRON, "input": {"x": "{{ a b }}"}}, "input.x: invalid placeholder"),
        ({**CRON, "kind": "timer"}, "kind: unknown kind 'timer'"),
        ({**FILES, "interval_seconds": 0.1}, "interval_seconds: must be at least 0.5"),
        ({**FILES, "path": "nowhere"}, "path: directory not found: nowhere"),
        ({**FILES, "pattern": "sub/*.json"}, "cannot contain '/'"),
        ({**FILES, "recursiv": True}, "unknown key 'recursiv' (did you mean 'recursive'?)"),
        (
            {**HOOK, "secret_env": "TM_UNSET_SECRET"},
            "environment variable TM_UNSET_SECRET is not set",
        ),
        (
            {**HOOK, "route": "hooks/orders"},
            "route: 'hooks/orders' must be a path starting with '/'",
        ),
        ({**HOOK, "method": "FETCH"}, "method: 'FETCH' is not one of"),
        ({**HOOK, "bind_port": 70000}, "bind_port: must be between 0 and 65535"),
        ({**HOOK, "max_body_bytes": 0}, "max_body_bytes: must be between"),
    ],
)
def test_one_problem_one_line_with_the_trigger_id(
    write_config: WriteConfig, entry: dict[str, Any], fragment: str
) -> None:
    problems = problems_of(write_config, entry)
    assert len(problems) == 1, problems
    assert f"trigger '{entry['id']}': " in problems[0]
    assert fragment in problems[0]


def test_missing_keys(write_config: WriteConfig) -> None:
    problems = problems_of(write_config, {"id": "bare", "kind": "cron"})
    assert problems == [
        f"{write_config()}: trigger 'bare': missing required key 'flow' (the flow file to enqueue)",
        f"{write_config()}: trigger 'bare': missing required key 'cron'",
    ]


def test_an_entry_without_a_usable_id_is_named_by_position(write_config: WriteConfig) -> None:
    problems = problems_of(write_config, CRON, {**CRON, "id": "has space"})
    assert len(problems) == 1
    assert "trigger #2: id: 'has space' must be" in problems[0]


def test_duplicate_ids(write_config: WriteConfig) -> None:
    problems = problems_of(write_config, CRON, {**CRON, "cron": "@daily"})
    assert problems == [f"{write_config()}: trigger 'hourly': duplicate id (also trigger #1)"]


def test_webhook_without_a_secret_must_say_so_explicitly(write_config: WriteConfig) -> None:
    bare = {k: v for k, v in HOOK.items() if k != "secret_env"}
    problems = problems_of(write_config, bare)
    assert len(problems) == 1
    assert "set secret_env" in problems[0] and "allow_unauthenticated: true" in problems[0]
    assert problems_of(write_config, {**bare, "allow_unauthenticated": True}) == []
    assert (
        problems_of(write_config, {**bare, "allow_unauthenticated": True, "bind_host": "::1"}) == []
    )


def test_unauthenticated_webhooks_are_refused_on_non_loopback_binds(
    write_config: WriteConfig,
) -> None:
    bare = {k: v for k, v in HOOK.items() if k != "secret_env"}
    problems = problems_of(
        write_config, {**bare, "allow_unauthenticated": True, "bind_host": "0.0.0.0"}
    )
    assert len(problems) == 1
    assert "refused on non-loopback bind_host 0.0.0.0" in problems[0]
    # with a secret, a public bind is fine
    assert problems_of(write_config, {**HOOK, "bind_host": "0.0.0.0"}) == []


def test_empty_secret_is_an_error(write_config: WriteConfig) -> None:
    problems = problems_of(write_config, HOOK, environ={"TM_WEBHOOK_SECRET": ""})
    assert problems == [
        f"{write_config()}: trigger 'orders': secret_env: environment variable TM_WEBHOOK_SECRET"
        " is empty"
    ]


def test_routes_sharing_a_port_must_differ(write_config: WriteConfig) -> None:
    problems = problems_of(write_config, HOOK, {**HOOK, "id": "orders-2"})
    assert problems == [
        f"{write_config()}: trigger 'orders-2': route /hooks/orders is already served by 'orders'"
    ]
    # same route on another port is fine
    assert problems_of(write_config, HOOK, {**HOOK, "id": "o2", "bind_port": 8082}) == []


def test_a_wildcard_and_a_specific_host_on_one_port_conflict(write_config: WriteConfig) -> None:
    other = {**HOOK, "id": "public", "route": "/other", "bind_host": "0.0.0.0"}
    problems = problems_of(write_config, HOOK, other)
    assert len(problems) == 1
    assert "trigger 'public': 0.0.0.0:8081 overlaps 127.0.0.1:8081 of 'orders'" in problems[0]


def test_unknown_placeholders_are_warnings_not_problems(write_config: WriteConfig) -> None:
    entry = {**FILES, "input": {"file": "{{ path }}", "typo": "{{ pth }}", "b": "{{ body.id }}"}}
    report = check_config(write_config(entry), environ={})
    assert report.problems == []
    assert report.config is not None
    assert len(report.warnings) == 2
    typo, body = sorted(report.warnings, key=lambda line: "input.typo" not in line)
    assert "trigger 'ingest': input.typo: filesystem events have no 'pth'" in typo
    assert "{{ pth }} renders as null" in typo
    assert "trigger 'ingest': input.b: filesystem events have no 'body'" in body


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("version: 1\ntriggers: [\n", "invalid YAML at line"),
        ("- just a list\n", "expected a mapping with 'version: 1' and 'triggers:'"),
        ("version: 2\ntriggers: []\n", "unsupported version 2"),
        ("version: 1\n", "'triggers' must be a list"),
        ("version: 1\ntriggers: []\nextra: 1\n", "unknown top-level key 'extra'"),
    ],
)
def test_file_level_problems(project: Path, text: str, fragment: str) -> None:
    path = project / "triggers.yaml"
    path.write_text(text)
    report = check_config(path, environ={})
    assert report.config is None
    assert len(report.problems) == 1
    assert fragment in report.problems[0]
    assert report.problems[0].startswith(str(path))


def test_missing_file(project: Path) -> None:
    report = check_config(project / "absent.yaml")
    assert report.problems == [
        f"{project / 'absent.yaml'}: file not found (create one with `tm triggers init`)"
    ]


def test_load_config_raises_a_usage_error_with_every_problem(write_config: WriteConfig) -> None:
    path = write_config({**CRON, "cron": "every monday"}, {**FILES, "path": "nowhere"})
    with pytest.raises(TriggerConfigError) as caught:
        load_config(path, environ={})
    error = caught.value
    assert isinstance(error, UsageError)
    assert error.exit_code == 2
    assert len(error.problems) == 2
    assert "\n" not in str(error)
    assert str(error).endswith("(and 1 more; run `tm triggers validate`)")


def test_flow_loader_problems_are_reported_per_trigger(write_config: WriteConfig) -> None:
    def loader(path: Path) -> object:
        raise FlowError(str(path), "edge to unknown step 'x'", step="greet")

    report = check_config(write_config(CRON), environ={}, flow_loader=loader)
    assert len(report.problems) == 1
    assert "trigger 'hourly': flow: " in report.problems[0]
    assert "step 'greet': edge to unknown step 'x'" in report.problems[0]
