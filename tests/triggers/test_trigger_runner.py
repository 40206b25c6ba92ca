"""TriggerRunner end to end with real threads and the real clock (short, bounded waits)."""

from __future__ import annotations

import http.client
import itertools
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from trigger_fakes import FakeSubmitter, fake_flow_loader

import tracemind.triggers
from tracemind.errors import FlowError
from tracemind.flows import FlowSnapshot
from tracemind.triggers import TriggerRunner

EVERY: dict[str, Any] = {
    "id": "tick",
    "kind": "cron",
    "cron": "@every 1s",
    "flow": "flows/hello.yaml",
    "input": {"at": "{{ scheduled_at }}"},
}
FILES: dict[str, Any] = {
    "id": "ingest",
    "kind": "filesystem",
    "path": "incoming",
    "interval_seconds": 0.5,
    "flow": "flows/hello.yaml",
    "input": {"file": "{{ name }}"},
}
HOOK: dict[str, Any] = {
    "id": "hook",
    "kind": "webhook",
    "route": "/h",
    "bind_port": 0,
    "allow_unauthenticated": True,
    "flow": "flows/hello.yaml",
}


def wait_for(predicate: Any, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


def trigger_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("tm-trigger-")]


def test_public_api_is_pinned() -> None:
    assert sorted(tracemind.triggers.__all__) == [
        "ConfigReport",
        "CronError",
        "CronSpec",
        "FilesystemSpec",
        "Schedule",
        "SubmitOutcome",
        "Submitter",
        "TriggerConfigError",
        "TriggerRunner",
        "TriggerStartError",
        "TriggersConfig",
        "WebhookSpec",
        "check_config",
        "load_config",
        "parse_schedule",
        "render",
        "write_sample",
    ]


def test_every_second_fires_on_whole_seconds_one_second_apart(
    load: Any, project: Path, submitter: FakeSubmitter
) -> None:
    runner = TriggerRunner(
        load(EVERY), submitter, state_dir=project / "state", flow_loader=fake_flow_loader
    )
    runner.start()
    try:
        assert wait_for(lambda: len(submitter.calls) >= 3, timeout_s=6.0)
    finally:
        runner.stop()
    scheduled = [
        datetime.fromisoformat(c.inputs["at"].replace("Z", "+00:00")) for c in submitter.calls
    ]
    assert all(moment.microsecond == 0 for moment in scheduled)
    gaps = {(b - a).total_seconds() for a, b in itertools.pairwise(scheduled)}
    assert gaps == {1.0}  # not N+1 (the reference's bug)
    # each fire happened within a small delay of its scheduled time
    for call, moment in zip(submitter.calls, scheduled, strict=True):
        assert call.trigger is not None
        fired = datetime.fromisoformat(call.trigger["time"].replace("Z", "+00:00"))
        assert 0 <= (fired - moment).total_seconds() < 0.5


def test_stats_have_the_ps_shape_and_stop_ends_every_thread(
    load: Any, project: Path, submitter: FakeSubmitter
) -> None:
    runner = TriggerRunner(
        load(EVERY, FILES, HOOK),
        submitter,
        state_dir=project / "state",
        flow_loader=fake_flow_loader,
    )
    before = runner.stats()
    assert [entry["next_fire"] for entry in before] == [None, None, None]
    runner.start()
    try:
        assert len(trigger_threads()) == 3
        (project / "incoming" / "a.json").write_text("{}")
        assert wait_for(lambda: any(c.inputs.get("file") == "a.json" for c in submitter.calls))
        entries = runner.stats()
    finally:
        runner.stop()
    assert [(e["id"], e["kind"]) for e in entries] == [
        ("tick", "cron"),
        ("ingest", "filesystem"),
        ("hook", "webhook"),
    ]
    keys = {
        "id",
        "kind",
        "last_fire",
        "next_fire",
        "enqueued",
        "deduplicated",
        "failed",
        "last_error",
    }
    assert all(set(entry) == keys for entry in entries)
    tick, ingest, hook = entries
    assert tick["next_fire"].endswith("Z")
    assert ingest["enqueued"] == 1 and ingest["next_fire"] is None
    assert ingest["last_fire"].endswith("Z")
    assert hook["enqueued"] == 0 and hook["last_fire"] is None
    assert wait_for(lambda: not trigger_threads(), timeout_s=2.0)
    runner.stop()  # a second stop is harmless


def test_an_invalid_flow_fails_start_before_anything_runs(
    load: Any, project: Path, submitter: FakeSubmitter
) -> None:
    def broken(path: Path) -> object:
        raise FlowError(str(path), "missing entry step")

    runner = TriggerRunner(
        load(EVERY, HOOK), submitter, state_dir=project / "state", flow_loader=broken
    )
    with pytest.raises(FlowError) as caught:
        runner.start()
    assert caught.value.exit_code == 2
    assert trigger_threads() == []
    assert not (project / "state").exists()  # nothing started, nothing written


def test_the_default_flow_loader_uses_the_real_flows(
    load: Any, project: Path, submitter: FakeSubmitter
) -> None:
    # The sample flow in the project fixture is a real one: the runner loads its snapshot.
    runner = TriggerRunner(load(HOOK), submitter, state_dir=project / "state")
    with runner:
        host, port = runner.webhook_addresses()["hook"]
        connection = http.client.HTTPConnection(host, port, timeout=5)
        connection.request("POST", "/h", body=b'{"name": "x"}')
        assert connection.getresponse().status == 202
        connection.close()
    snapshot = submitter.calls[0].flow
    assert isinstance(snapshot, FlowSnapshot)
    assert snapshot.source_path == str(project / "flows" / "hello.yaml")
    assert snapshot.flow["id"] == "hello"
