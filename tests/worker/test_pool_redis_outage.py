"""``tm workers start`` (a foreground pool) on Redis while redis-server is SIGKILLed and started
again: a serving pool rides it out and runs what is enqueued after; a ``--burst`` pool stops
with one line and exit 1. Real processes, stopped by their PID."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from redis_server import RedisServer
from tm_testing import FlowFiles, Tm, wait_until

OUTAGE_S = 2.0


def _pool(tm: Tm, tmp_path: Path, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
    output = tmp_path / f"pool-{uuid.uuid4().hex[:6]}.out"
    return tm.start("workers", "start", "-n", "1", *args, stdout=output), output


@pytest.mark.slow
def test_a_serving_pool_rides_out_a_redis_restart(
    tm: Tm, flows: FlowFiles, tmp_path: Path, redis_server: RedisServer
) -> None:
    # Given a pool serving a Redis queue, which ran a first task
    redis_server.start()
    tm.env["TM_QUEUE_URL"] = f"{redis_server.url}?prefix=p{uuid.uuid4().hex[:8]}"
    echo = flows.write("echo", "tracemind.steps.echo")
    pool, output = _pool(tm, tmp_path)
    first = tm.json("enqueue", echo, "-i", "{}", "--json")["task_id"]
    assert tm("task", "wait", first, "--timeout", "30").returncode == 0
    # When redis-server is SIGKILLed, stays down a while, and starts again
    redis_server.kill()
    time.sleep(OUTAGE_S)
    assert pool.poll() is None, output.read_text()[-3000:]
    redis_server.restart()
    # Then the same pool runs what is enqueued after, and stops cleanly on SIGTERM
    second = tm.json("enqueue", echo, "-i", "{}", "--json")["task_id"]
    assert tm("task", "wait", second, "--timeout", "30").returncode == 0
    pool.send_signal(signal.SIGTERM)
    assert pool.wait(timeout=30) == 0
    text = output.read_text()
    assert "Traceback" not in text, text[-3000:]
    events = [json.loads(line)["event"] for line in text.splitlines() if line.startswith("{")]
    assert "queue unreachable; retrying until it is back" in events
    assert "queue reachable again" in events


@pytest.mark.slow
def test_a_burst_pool_stops_with_one_line_when_redis_goes_away(
    tm: Tm, flows: FlowFiles, tmp_path: Path, redis_server: RedisServer
) -> None:
    # Given a burst pool at work on slow tasks
    redis_server.start()
    tm.env["TM_QUEUE_URL"] = f"{redis_server.url}?prefix=b{uuid.uuid4().hex[:8]}"
    slow = flows.write("slow", "tracemind.steps.sleep")
    batch = tmp_path / "batch.jsonl"
    batch.write_text("".join(json.dumps({"seconds": 0.5}) + "\n" for _ in range(20)))
    assert tm("enqueue", slow, "--inputs", batch).returncode == 0
    pool, output = _pool(tm, tmp_path, "--burst")
    wait_until(lambda: "task started" in output.read_text(), 30, "a task started")
    # When redis-server is SIGKILLed
    redis_server.kill()
    # Then the pool stops, exit 1, with one error line naming the server (no traceback)
    assert pool.wait(timeout=60) == 1
    text = output.read_text()
    errors = [line for line in text.splitlines() if line.startswith("tm: error:")]
    assert len(errors) == 1, text[-3000:]
    assert errors[0].startswith(f"tm: error: redis 127.0.0.1:{redis_server.port}: unreachable")
    assert "Traceback" not in text, text[-3000:]
