"""What ``tm`` prints and exits with when things go right (the output is a contract)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tm_testing import FakeClock, FlowFiles, Tm, make_task
from tracemind.backend.file.stores import open_stores
from tracemind.config import DataDirs
from tracemind.queue.names import is_task_id
from tracemind.queue.protocol import Failure

HELLO = Path(__file__).resolve().parents[2] / "examples" / "flows" / "hello.yaml"


def test_tm_run_prints_the_final_state_as_json(tm: Tm) -> None:
    proc = tm("run", HELLO, "-i", '{"name": "TraceMind"}')

    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"name": "TraceMind", "greeting": "Hello, TraceMind!"}
    assert proc.stderr == ""


def test_tm_run_reads_input_from_a_file(tm: Tm, tmp_path: Path) -> None:
    (tmp_path / "in.json").write_text('{"name": "file"}')

    proc = tm("run", HELLO, "-i", "@in.json")

    assert json.loads(proc.stdout)["greeting"] == "Hello, file!"


def test_tm_run_exits_1_with_the_step_error_when_a_step_fails(
    tm: Tm, flows: FlowFiles, data_root: Path
) -> None:
    flow = flows.write("failing", "tracemind.steps.fail")

    proc = tm("run", flow, "-i", '{"message": "disk on fire"}')

    assert proc.returncode == 1
    assert proc.stdout == ""
    [line] = proc.stderr.strip().splitlines()
    assert line == "tm: error: step 'work' failed: RuntimeError: disk on fire"
    assert not data_root.exists()  # a synchronous run touches no queue


def test_tm_run_detached_enqueues_when_the_daemon_flag_is_set(tm: Tm, dirs: DataDirs) -> None:
    env = {"TM_ENABLE_DAEMON": "yes"}
    text = tm("run", HELLO, "--detached", "-i", "{}", env=env)
    as_json = tm.json("run", HELLO, "--detached", "--json", "--idempotency-key", "a", env=env)

    assert text.returncode == 0 and is_task_id(text.stdout.strip())
    assert set(as_json) == {"task_id", "duplicate"}
    assert open_stores(dirs, durable=False).queue.stats().pending == 2


def test_tm_enqueue_prints_the_task_id_or_exactly_two_json_keys(tm: Tm, dirs: DataDirs) -> None:
    text = tm("enqueue", HELLO, "-i", '{"name": "a"}')
    as_json = tm.json("enqueue", HELLO, "--json")

    task_id = text.stdout.strip()
    assert is_task_id(task_id)
    assert as_json == {"task_id": as_json["task_id"], "duplicate": False}
    info = open_stores(dirs, durable=False).queue.find(task_id)
    assert info is not None and info.record["input"] == {"name": "a"}
    assert info.record["flow"]["flow"]["id"] == "hello"


def test_tm_enqueue_inputs_is_one_batch_with_a_summary(
    tm: Tm, tmp_path: Path, dirs: DataDirs
) -> None:
    lines = [{"id": "a", "n": 1}, {"id": "b", "n": 2}, {"id": "a", "n": 3}, {"id": 7}]
    (tmp_path / "in.jsonl").write_text("\n".join(map(json.dumps, lines)) + "\n\n")

    summary = tm.json(
        "enqueue", HELLO, "--inputs", "in.jsonl", "--idempotency-key-field", "id", "--json"
    )
    text = tm("enqueue", HELLO, "--inputs", "in.jsonl")

    assert set(summary) == {"enqueued", "duplicates", "task_ids"}
    assert (summary["enqueued"], summary["duplicates"]) == (3, 1)
    ids = summary["task_ids"]
    assert len(ids) == 4 and ids[2] == ids[0] and len(set(ids)) == 3
    assert text.stdout.strip() == "enqueued 4 task(s), 0 duplicate(s)"
    assert open_stores(dirs, durable=False).queue.stats().pending == 7


def test_tm_queue_stats_json(tm: Tm) -> None:
    tm("enqueue", HELLO)

    stats = tm.json("queue", "stats", "--json")
    text = tm("queue", "stats")

    assert {"pending", "inflight", "delayed", "oldest_pending_age_s"} <= set(stats)
    assert (stats["pending"], stats["inflight"], stats["delayed"]) == (1, 0, 0)
    assert isinstance(stats["oldest_pending_age_s"], float)
    assert 0 <= stats["oldest_pending_age_s"] < 60
    assert "pending" in text.stdout and text.returncode == 0


def test_tm_queue_stats_of_a_missing_directory_is_zero_and_creates_nothing(
    tm: Tm, data_root: Path
) -> None:
    stats = tm.json("queue", "stats", "--json")

    assert (stats["pending"], stats["oldest_pending_age_s"]) == (0, None)
    assert not data_root.exists()


@pytest.fixture
def finished(dirs: DataDirs) -> dict[str, str]:
    """A succeeded, a dead and a pending task (made through the library, real clock)."""
    clock = FakeClock(time.time())
    stores = open_stores(dirs, durable=False, clock=clock)
    ids = {}
    for name in ("succeeded", "dead", "pending"):
        task = make_task(clock, max_attempts=1)
        stores.queue.enqueue([task])
        ids[name] = task.task_id
        clock.advance(0.01)
    lease = stores.queue.lease("c", 30)
    assert lease is not None
    stores.queue.ack(lease, {"answer": 42})
    lease = stores.queue.lease("c", 30)
    assert lease is not None
    stores.queue.dead_letter(lease, Failure("RuntimeError: nope"))
    return ids


def test_tm_task_show_json(tm: Tm, finished: dict[str, str]) -> None:
    keys = {"task_id", "flow_id", "status", "attempts", "enqueued_at", "finished_at"}

    ok = tm.json("task", "show", finished["succeeded"], "--json")
    dead = tm.json("task", "show", finished["dead"], "--json")
    pending = tm.json("task", "show", finished["pending"], "--json")

    assert keys | {"result"} <= set(ok) and "error" not in ok
    assert (ok["status"], ok["attempts"], ok["result"]) == ("succeeded", 1, {"answer": 42})
    assert ok["finished_at"].endswith("Z") and ok["enqueued_at"].endswith("Z")
    assert keys | {"error"} <= set(dead) and "result" not in dead
    assert (dead["status"], dead["error"]) == ("dead", "RuntimeError: nope")
    assert (pending["status"], pending["attempts"], pending["finished_at"]) == ("pending", 0, None)
    assert tm("task", "show", finished["succeeded"]).stdout.startswith("task_id ")


@pytest.mark.parametrize(("name", "code"), [("succeeded", 0), ("dead", 1)])
def test_tm_task_wait_exit_code_says_how_the_task_ended(
    tm: Tm, finished: dict[str, str], name: str, code: int
) -> None:
    proc = tm("task", "wait", finished[name], "--timeout", "5", "--json")

    assert proc.returncode == code
    assert json.loads(proc.stdout)["status"] == name


def test_tm_task_wait_times_out_with_exit_3(tm: Tm, finished: dict[str, str]) -> None:
    started = time.monotonic()
    proc = tm("task", "wait", finished["pending"], "--timeout", "0.3")

    assert proc.returncode == 3
    assert 0.3 <= time.monotonic() - started < 10
    assert "pending" in proc.stdout


def test_python_dash_m_tracemind_is_tm(tm: Tm) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tracemind", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        env=tm.env,
        check=False,
    )

    assert proc.returncode == 0
    for verb in ("run", "enqueue", "queue", "task", "dlq", "workers"):
        assert verb in proc.stdout
    assert tm("--version").stdout.startswith("tm ")
