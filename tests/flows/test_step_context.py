"""``tm run`` and the workers give a step the same ``ctx`` (built in one place,
``tracemind.flows.runner.step_context``): a step that reads ``ctx["_trigger"]`` or asks
``ctx["cancel_requested"]()`` works under both."""

from __future__ import annotations

import json
import random
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tm_testing import FakeClock, Tm
from tracemind.backend.file.stores import Stores
from tracemind.flows import load_flow
from tracemind.queue.protocol import TaskStatus
from tracemind.worker.consumer import Consumer
from tracemind.worker.runtime import FlowRuntime

HOOK = """
def describe(ctx, state):
    return {
        "keys": sorted(ctx),
        "trigger": ctx["_trigger"],
        "cancel": ctx["cancel_requested"](),
        "attempt": ctx["attempt"],
        "flow_id": ctx["flow_id"],
    }
"""


@pytest.fixture
def flow_path(tmp_path: Path, helpers_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (helpers_dir / "tm_test_ctx.py").write_text(textwrap.dedent(HOOK))
    monkeypatch.syspath_prepend(str(helpers_dir))
    path = tmp_path / "ctx.json"
    flow = {
        "id": "ctx",
        "steps": [{"id": "look", "kind": "task", "hooks": {"run": "tm_test_ctx.describe"}}],
    }
    path.write_text(json.dumps({"flow": flow}))
    return path


def _worker_result(stores: Stores, flow_path: Path, trigger: dict[str, Any] | None) -> Any:
    submitted = stores.submitter(60.0).submit(load_flow(flow_path), {}, trigger=trigger)
    consumer = Consumer(stores.queue, FlowRuntime(), "c1", lease_s=30.0, rng=random.Random(1))
    assert consumer.run_once()
    info = stores.queue.find(submitted.task_id)
    assert info is not None and info.status is TaskStatus.SUCCEEDED, info
    return info.record["result"]


def test_tm_run_and_a_worker_give_a_step_the_same_context(
    tm: Tm, stores: Stores, clock: FakeClock, flow_path: Path
) -> None:
    proc = tm("run", flow_path)
    assert proc.returncode == 0, proc.stderr
    under_tm_run = json.loads(proc.stdout)

    in_worker = _worker_result(stores, flow_path, None)

    assert under_tm_run == in_worker
    assert under_tm_run["keys"] == [
        "_trigger",
        "attempt",
        "cancel_requested",
        "flow_id",
        "step_id",
        "task_id",
    ]
    assert (under_tm_run["trigger"], under_tm_run["cancel"]) == (None, False)


def test_a_worker_gives_a_step_the_trigger_metadata(stores: Stores, flow_path: Path) -> None:
    trigger = {"id": "tick", "kind": "cron", "key": "tick:1"}
    assert _worker_result(stores, flow_path, trigger)["trigger"] == trigger
