"""A step's own ``logging`` lines come out of a real worker process as JSON objects carrying the
task's id, flow id and attempt, like the worker's own events."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from tm_testing import FlowFiles, Tm

STEP_SOURCE = '''
"""A step that logs through the standard library, as user code does."""
import logging

log = logging.getLogger("user.steps")


def chatty(ctx, state):
    log.info("greeting %s", state["name"], extra={"letters": len(state["name"])})
    logging.getLogger().warning("from the root logger")
    try:
        raise ValueError("handled")
    except ValueError:
        log.exception("caught something")
    return {"ok": True}
'''


def test_a_steps_stdlib_logging_is_json_with_the_task_context(
    tm: Tm, flows: FlowFiles, helpers_dir: Path, tmp_path: Path
) -> None:
    # Given a flow whose step logs through stdlib logging (user code on the workers' path)
    (helpers_dir / "user_chatty.py").write_text(textwrap.dedent(STEP_SOURCE))
    flow = flows.write("chatty-flow", "user_chatty.chatty")
    task_id = tm("enqueue", flow, "-i", '{"name": "Ada"}').stdout.strip()
    assert task_id

    # When a real worker process runs it (a burst pool: it exits once the queue is empty)
    out = tmp_path / "workers.out"
    proc = tm.start("workers", "start", "-n", "1", "--burst", stdout=out)
    assert proc.wait(timeout=60) == 0, out.read_text()[-2000:]

    # Then every line the pool and its worker wrote is one JSON object...
    lines = out.read_text().splitlines()
    events = [json.loads(line) for line in lines]
    assert events and all(isinstance(e, dict) for e in events)
    by_event = {e["event"]: e for e in events}
    # ... and the step's lines carry the task's context, level and logger name
    context = {"task_id": task_id, "flow_id": "chatty-flow", "attempt": 1}
    greeting = by_event["greeting Ada"]
    assert {k: greeting.get(k) for k in context} == context, greeting
    assert (greeting["level"], greeting["logger"], greeting["letters"]) == ("info", "user.steps", 3)
    assert greeting["timestamp"].endswith("Z")
    root = by_event["from the root logger"]
    assert {k: root.get(k) for k in context} == context and root["level"] == "warning"
    caught = by_event["caught something"]
    assert caught["level"] == "error" and "ValueError: handled" in caught["exception"]
    # ... like the worker's own event for the same task
    assert {k: by_event["task succeeded"].get(k) for k in context} == context
