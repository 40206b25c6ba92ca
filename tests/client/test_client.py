"""The Python client on real stores in a temporary data root, with a fake clock: what each
method returns, what it leaves on disk, and the errors of the one hierarchy. The daemon-backed
scenarios (tasks that finish) are in tests/daemon/test_daemon_client.py."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import tracemind
from tm_testing import START_S, FakeClock, FlowFiles, files_under
from tracemind import (
    Client,
    FlowError,
    NotFound,
    StepFailed,
    TaskStatus,
    UsageError,
    WaitTimeout,
)
from tracemind.backend import open_backend
from tracemind.flows import load_flow
from tracemind.queue.protocol import Failure


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A clean environment: no TM_* variable, the flow cache under the test's directory."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TM_")}
    clean["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    return clean


@pytest.fixture
def client(data_root: Path, clock: FakeClock, env: dict[str, str]) -> Client:
    return Client(data_root, clock=clock, env=env)


@pytest.fixture
def echo(flows: FlowFiles) -> Path:
    return flows.write("echo", "tracemind.steps.echo")


def test_public_api_is_pinned() -> None:
    # Changing this list is a public API change: do it on purpose.
    assert tracemind.__all__ == [
        "Client",
        "DisabledError",
        "FlowError",
        "LockTimeout",
        "NotFound",
        "QueueCounts",
        "QueueError",
        "StepFailed",
        "TaskInfo",
        "TaskStatus",
        "TraceMindError",
        "UsageError",
        "WaitTimeout",
        "__version__",
    ]
    for name in tracemind.__all__:
        assert getattr(tracemind, name) is not None


def test_import_tracemind_loads_nothing_but_itself() -> None:
    # Given a fresh interpreter, When it imports tracemind, Then no submodule came with it
    # (the client, the queue, the flows are imported when first used).
    probe = "import sys, tracemind; print(sorted(m for m in sys.modules if 'tracemind' in m))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert out.strip() == "['tracemind']"


def test_location_none_resolves_like_the_cli(tmp_path: Path, env: dict[str, str]) -> None:
    env["TM_DATA_DIR"] = str(tmp_path / "root")
    env["TM_DLQ_DIR"] = str(tmp_path / "dead")

    queue, idempotency, dlq = Client(env=env).location.file_dirs()

    assert queue == str(tmp_path / "root" / "queue")
    assert idempotency == str(tmp_path / "root" / "idempotency")
    assert dlq == str(tmp_path / "dead")


def test_enqueue_returns_a_pending_task_that_get_reports(
    client: Client, echo: Path, data_root: Path
) -> None:
    task_id = client.enqueue(echo, {"n": 1})

    info = client.get(task_id)
    assert info is not None
    assert info.status is TaskStatus.PENDING and not info.finished
    assert (info.flow_id, info.attempts, info.enqueued_at_s) == ("echo", 0, START_S)
    assert info.to_dict()["status"] == "pending"
    assert any(task_id in name for name in files_under(data_root / "queue" / "pending"))


def test_enqueue_takes_a_loaded_flow(client: Client, echo: Path) -> None:
    snapshot = load_flow(echo)

    task_id = client.enqueue(snapshot, {"n": 2})

    info = client.get(task_id)
    assert info is not None and info.flow_id == "echo"


def test_delay_keeps_the_task_delayed_until_due(
    client: Client, echo: Path, clock: FakeClock
) -> None:
    # Given a task enqueued with a 30 s delay on a fake clock
    task_id = client.enqueue(echo, {}, delay_s=30)

    # Then it is delayed, due 30 s after the enqueue, and becomes pending when the clock passes it
    info = client.get(task_id)
    assert info is not None and info.status is TaskStatus.DELAYED
    assert info.due_s == START_S + 30
    clock.advance(29.9)
    assert client.get(task_id).status is TaskStatus.DELAYED  # type: ignore[union-attr]
    clock.advance(0.2)
    assert client.get(task_id).status is TaskStatus.PENDING  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "at",
    [
        dt.datetime.fromtimestamp(START_S + 3600, tz=dt.UTC).isoformat().replace("+00:00", "Z"),
        dt.datetime.fromtimestamp(START_S + 3600, tz=dt.timezone(dt.timedelta(hours=2))),
        START_S + 3600,
    ],
    ids=["iso-z", "aware-datetime", "epoch"],
)
def test_at_makes_the_task_due_at_that_time(client: Client, echo: Path, at: object) -> None:
    task_id = client.enqueue(echo, {}, at=at)  # type: ignore[arg-type]

    info = client.get(task_id)
    assert info is not None and info.status is TaskStatus.DELAYED
    assert info.due_s == pytest.approx(START_S + 3600, abs=0.001)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"delay_s": -1}, "a delay must be from 0"),
        ({"delay_s": float("nan")}, "a delay must be from 0"),
        ({"at": "2026-12-24T18:00:00"}, "give a time zone"),
        ({"at": "tomorrow"}, "expected an ISO-8601 time"),
        ({"at": START_S, "delay_s": 1}, "not both"),
        ({"key": "\ud800"}, "not valid UTF-8"),
    ],
)
def test_bad_times_and_keys_are_usage_errors_and_enqueue_nothing(
    client: Client, echo: Path, data_root: Path, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(UsageError, match=message) as raised:
        client.enqueue(echo, {}, **kwargs)  # type: ignore[arg-type]

    assert raised.value.exit_code == 2
    assert files_under(data_root / "queue" / "pending") == []


@pytest.mark.parametrize(
    "bad_input", [[1, 2], {"x": float("inf")}, {"x": object()}, {"s": "\udc80"}]
)
def test_an_input_that_is_not_a_json_object_is_a_usage_error(
    client: Client, echo: Path, bad_input: object
) -> None:
    with pytest.raises(UsageError, match="input"):
        client.enqueue(echo, bad_input)  # type: ignore[arg-type]


def test_a_key_deduplicates(client: Client, echo: Path) -> None:
    first = client.enqueue(echo, {"n": 1}, key="k")
    second = client.enqueue(echo, {"n": 2}, key="k")

    assert second == first
    assert client.stats().pending == 1


def test_enqueue_many_is_one_batch_with_keys_from_a_field(client: Client, echo: Path) -> None:
    ids = client.enqueue_many(echo, [{"id": "a"}, {"id": "b"}, {"id": "a"}], key_field="id")

    assert len(ids) == 3 and ids[0] == ids[2] and ids[0] != ids[1]
    assert client.stats().pending == 2


def test_enqueue_many_rejects_the_batch_when_one_input_is_bad(
    client: Client, echo: Path, data_root: Path
) -> None:
    with pytest.raises(UsageError, match=r"inputs\[1\]: no field 'id'"):
        client.enqueue_many(echo, [{"id": "a"}, {"n": 2}], key_field="id")

    assert files_under(data_root / "queue" / "pending") == []


def test_enqueue_step_wraps_a_hook_in_a_one_step_flow(client: Client) -> None:
    task_id = client.enqueue_step("tracemind.steps.greet", {"name": "Ada"})

    info = client.get(task_id)
    assert info is not None and info.flow_id == "tracemind.steps.greet"


def test_an_unimportable_hook_says_where_it_looked(client: Client, tmp_path: Path) -> None:
    with pytest.raises(FlowError) as raised:
        client.enqueue_step("no_such_module_here.fn", {})

    message = str(raised.value)
    assert "cannot import 'no_such_module_here'" in message
    assert f"looked in {os.getcwd()}" in message
    assert "--app-dir" in message and "\n" not in message


def test_app_dirs_make_a_users_module_importable(
    data_root: Path, clock: FakeClock, env: dict[str, str], tmp_path: Path
) -> None:
    app = tmp_path / "app"
    app.mkdir()
    (app / "tm_client_app_mod.py").write_text("def work(ctx, state):\n    return {'ok': 1}\n")

    client = Client(data_root, app_dirs=[app], clock=clock, env=env)

    assert client.run(load_flow_for(client, "tm_client_app_mod.work"), {}) == {"ok": 1}
    assert client.app_dirs == (str(app),)


def load_flow_for(client: Client, hook: str) -> object:
    from tracemind.flows import step_flow

    return step_flow(hook)


def test_run_returns_the_final_state_and_raises_step_failed(
    client: Client, flows: FlowFiles
) -> None:
    greet = flows.write("greet", "tracemind.steps.greet")
    fail = flows.write("fail", "tracemind.steps.fail", retry={"max_attempts": 5})

    assert client.run(greet, {"name": "Ada"}) == {"name": "Ada", "greeting": "Hello, Ada!"}
    with pytest.raises(StepFailed, match="step 'work' failed: RuntimeError: boom") as raised:
        client.run(fail, {"message": "boom"})
    assert raised.value.exit_code == 1
    assert client.stats().pending == 0  # run enqueues nothing


def test_get_of_an_unknown_or_malformed_id(client: Client) -> None:
    assert client.get("0123456789abcdef012345") is None
    with pytest.raises(UsageError, match="not a task id"):
        client.get("nope")


def test_wait_raises_not_found_and_times_out_with_the_unfinished_ids(
    client: Client, echo: Path
) -> None:
    task_id = client.enqueue(echo, {})

    with pytest.raises(NotFound):
        client.wait(["0123456789abcdef012345"], timeout_s=0)
    started = time.monotonic()
    with pytest.raises(WaitTimeout) as raised:
        client.wait(task_id, timeout_s=0.3)
    assert 0.25 <= time.monotonic() - started < 2.0
    assert raised.value.unfinished == [task_id] and raised.value.exit_code == 3


def test_wait_is_woken_by_the_terminal_record_not_by_polling(
    client: Client, echo: Path, clock: FakeClock
) -> None:
    # Given two tasks, one finished by another thread's consumer 1.5 s from now, one dead-lettered
    a, b = client.enqueue(echo, {"n": 1}), client.enqueue(echo, {"n": 2})
    worker = open_backend(client.location, durable=False, clock=clock).queue
    looks: list[int] = []

    def finish_later() -> None:
        time.sleep(1.5)
        first = worker.lease("w1", 30)
        second = worker.lease("w1", 30)
        assert first is not None and second is not None
        worker.ack(first, {"n": first.record["input"]["n"]})
        worker.dead_letter(second, Failure("gave up"))

    thread = threading.Thread(target=finish_later)
    thread.start()
    try:
        # When the client waits on both
        started = time.monotonic()
        infos = client.wait(
            [a, b], timeout_s=20, on_progress=lambda done, total: looks.append(done)
        )
        waited_s = time.monotonic() - started
    finally:
        thread.join(timeout=10)

    # Then it returned soon after they finished, having looked a handful of times, not every 50 ms
    assert [i.status for i in infos] == [TaskStatus.SUCCEEDED, TaskStatus.DEAD]
    assert infos[0].result == {"n": 1} and infos[1].error == "gave up"
    assert 1.4 <= waited_s < 3.0
    assert len(looks) <= 6, looks


def test_stats_counts_by_state(client: Client, echo: Path) -> None:
    client.enqueue(echo, {})
    client.enqueue(echo, {}, delay_s=60)

    counts = client.stats()

    assert (counts.pending, counts.delayed, counts.inflight, counts.dead) == (1, 1, 0, 0)
    assert json.dumps(counts.to_dict())  # the `tm queue stats --json` document


def test_readers_create_nothing(client: Client, data_root: Path) -> None:
    client.stats()
    client.get("0123456789abcdef012345")
    assert client.wait([], timeout_s=0) == []

    assert not data_root.exists()
