"""A daemon on Redis rides out a Redis crash: redis-server (AOF, ``appendfsync always``) is
SIGKILLed while the daemon's workers run tasks, its status server answers and a cron trigger
fires, then started again on the same port and directory.

While it is down: ``/readyz`` answers 503 with the reason, ``tm daemon ps`` says why, a CLI verb
gives one line and exit 1, and a batch enqueue is whole or absent. Once it is back the same
daemon process (no restart) is ready again, every acknowledged enqueue runs to ``succeeded``,
and a task runs twice only when its lease lapsed during the outage. Executions are counted by
the counting runtime's append-only logs. Every process is ours, stopped by its PID.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from daemon_harness import DaemonEnv

from redis_server import RedisServer, free_port
from tm_testing import wait_until

BATCH = 5
"""Tasks per ``tm enqueue --inputs`` of the producer."""
PRODUCER_BATCHES_MAX = 60
REFUSED_PAUSE_S = 0.2
DOWN_S = 3.0
"""How long Redis stays down: longer than a short lease, shorter than the default one."""
TASK_S = 0.4


@dataclass
class Producer:
    """``tm enqueue --inputs`` of :data:`BATCH` keyed tasks, again and again on a thread until
    stopped (at most :data:`PRODUCER_BATCHES_MAX` batches); remembers every outcome."""

    env: DaemonEnv
    flow: Path
    results: list[tuple[Path, subprocess.CompletedProcess[str]]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def batch(self, n: int) -> Path:
        path = self.env.root / f"batch-{n}.jsonl"
        lines = [json.dumps({"seconds": 0.0, "key": f"{n}-{i}"}) for i in range(BATCH)]
        path.write_text("\n".join(lines) + "\n")
        return path

    def enqueue(self, batch: Path) -> subprocess.CompletedProcess[str]:
        # Keys make a batch's second submission say which of its tasks exist already.
        return self.env.tm("enqueue", self.flow, "--inputs", batch, "--json",
                           "--idempotency-key-field", "key")  # fmt: skip

    def run(self) -> None:
        for n in range(PRODUCER_BATCHES_MAX):
            if self.stop.is_set():
                return
            batch = self.batch(n)
            proc = self.enqueue(batch)
            self.results.append((batch, proc))
            if proc.returncode != 0:
                time.sleep(REFUSED_PAUSE_S)  # (a refusal is quick: keep batches for after)

    def acknowledged(self) -> list[str]:
        return [
            task_id
            for _, proc in self.results
            if proc.returncode == 0
            for task_id in json.loads(proc.stdout)["task_ids"]
        ]

    def refused(self) -> list[tuple[Path, subprocess.CompletedProcess[str]]]:
        return [(batch, proc) for batch, proc in self.results if proc.returncode != 0]


def _get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _ps(env: DaemonEnv) -> tuple[int, dict[str, Any]]:
    proc = env.tm("daemon", "ps", "--json", "--state-dir", env.state_dir)
    return proc.returncode, json.loads(proc.stdout)


def _trigger_enqueued(env: DaemonEnv) -> int:
    [tick] = _ps(env)[1]["triggers"]
    return int(tick["enqueued"])


@pytest.mark.slow
@pytest.mark.parametrize("lease_s", [30.0, 1.5], ids=["lease-outlives-outage", "lease-lapses"])
def test_a_daemon_rides_out_a_redis_restart_and_loses_nothing_acknowledged(
    daemon_env: DaemonEnv, redis_server: RedisServer, lease_s: float
) -> None:
    # Given Redis (AOF always), and a daemon on it: 2 counting workers, a status endpoint and
    # a cron trigger firing every second
    redis_server.start()
    env = daemon_env
    env.env.pop("TM_DATA_DIR")
    env.env["TM_QUEUE_URL"] = f"{redis_server.url}?prefix=o{uuid.uuid4().hex[:8]}"
    where = f"redis 127.0.0.1:{redis_server.port}: unreachable"
    sleep = env.flow("sleep", "sleep")
    tick = env.flow("tick", "tracemind.steps.echo")
    config = env.root / "triggers.yaml"
    trigger = {"id": "tick", "kind": "cron", "cron": "@every 1s", "flow": str(tick), "input": {}}
    config.write_text(yaml.safe_dump({"version": 1, "triggers": [trigger]}))
    status = f"http://127.0.0.1:{free_port()}"
    meta = env.start_ok(
        "--workers", "2", "--runtime", "tm_daemon_helpers:counting", "--lease-s", str(lease_s),
        "--status-bind", status.removeprefix("http://"),
        "--enable-triggers", "--triggers-config", str(config),
    )  # fmt: skip
    wait_until(lambda: _get(f"{status}/readyz")[0] == 200, 20, "the daemon ready")
    wait_until(lambda: _trigger_enqueued(env) >= 1, 20, "a first cron task")
    # ... 20 tasks of TASK_S each (5 s of work for 2 workers), and a producer enqueueing more
    first = env.enqueue_many(sleep, [{"seconds": TASK_S, "n": n} for n in range(20)])
    producer = Producer(env, sleep)
    thread = threading.Thread(target=producer.run, daemon=True)
    thread.start()
    wait_until(lambda: len(env.marks("started")) >= 3, 20, "tasks running")

    # When Redis is SIGKILLed mid-run
    redis_server.kill()
    killed_s = time.time()
    # Then the daemon reports not ready, with the reason, on /readyz and in ps
    wait_until(lambda: _get(f"{status}/readyz")[0] == 503, 15, "readyz 503")
    code, body = _get(f"{status}/readyz")
    assert code == 503 and body["reason"].startswith(where), body
    code, doc = _ps(env)
    assert code == 0 and doc["running"] is True and doc["ready"] is False
    assert doc["reason"].startswith(where) and doc["queue_error"].startswith(where)
    # (/status is made from the state dir, counts left out; its body may be a second old)
    wait_until(lambda: _get(f"{status}/status")[1].get("queue_error"), 5, "/status says why")
    code, body = _get(f"{status}/status")
    assert code == 200 and body["queue_error"].startswith(where) and body["ready"] is False
    # ... and a CLI verb gives one line and exit 1
    stats = env.tm("queue", "stats")
    assert stats.returncode == 1 and stats.stdout == ""
    assert stats.stderr.splitlines() == [stats.stderr.strip()], stats.stderr
    assert stats.stderr.startswith(f"tm: error: {where}")
    time.sleep(max(0.0, DOWN_S - (time.time() - killed_s)))

    # When Redis starts again on the same port and directory
    redis_server.restart()
    restarted_s = time.time()
    # Then the same daemon process is ready again, by itself
    wait_until(lambda: _get(f"{status}/readyz")[0] == 200, 30, "readyz 200 again")
    code, doc = _ps(env)
    assert code == 0 and doc["ready"] is True and doc["queue_error"] is None
    assert doc["pid"] == meta["pid"] and env.meta() == meta
    fired = _trigger_enqueued(env)
    wait_until(lambda: _trigger_enqueued(env) >= fired + 2, 20, "two cron fires after")
    producer.stop.set()
    thread.join(120)
    assert not thread.is_alive()

    # ... every acknowledged enqueue runs to succeeded
    acknowledged = first + producer.acknowledged()
    done = env.tm("task", "wait", *acknowledged, "--timeout", "60", "--json", timeout_s=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr + env.log_tail()
    # ... a refused batch was one line, and whole or absent: submitted again, its tasks are
    # all new or all duplicates
    assert producer.refused(), "no batch was refused while Redis was down"
    for batch, proc in producer.refused():
        # (--json: the error is one JSON line on stdout)
        assert (proc.returncode, proc.stderr) == (1, ""), proc.stdout + proc.stderr
        assert len(proc.stdout.splitlines()) == 1, proc.stdout
        error = json.loads(proc.stdout)
        assert error["exit"] == 1 and error["error"].startswith("redis 127.0.0.1"), error
        again = producer.enqueue(batch)
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["duplicates"] in (0, BATCH), again.stdout
    # ... and each ran once, except (with a lease shorter than the outage) tasks whose lease
    # was held across it: those may run a second time after it, never more
    counts = env.executions()
    assert set(acknowledged) <= set(counts)
    twice = {task_id for task_id, n in counts.items() if n > 1}
    started_before = {tid for tid, _, _ in env.marks("started")} - _started_after(env, restarted_s)
    if lease_s > DOWN_S * 3:
        assert twice == set(), twice
    assert twice <= started_before and max(counts.values()) <= 2, counts.most_common(5)
    # ... and the daemon logged the outage once per process part, without a traceback
    log = env.log_path.read_text()
    assert "Traceback" not in log and "daemon failed" not in log
    events = [event["event"] for event in env.log_events() if "event" in event]
    assert "queue unreachable; retrying until it is back" in events
    assert "queue reachable again" in events
    print(
        json.dumps(
            {
                "lease_s": lease_s,
                "acknowledged": len(acknowledged),
                "refused_batches": len(producer.refused()),
                "ran_twice": sorted(twice),
            }
        )
    )


def _started_after(env: DaemonEnv, epoch_s: float) -> set[str]:
    """Tasks whose every start mark was made after ``epoch_s``."""
    first: dict[str, float] = {}
    for path in env.marks_dir.glob("started.*"):
        task_id = path.name.split(".")[1]
        first[task_id] = min(first.get(task_id, path.stat().st_mtime), path.stat().st_mtime)
    return {task_id for task_id, at_s in first.items() if at_s > epoch_s}
