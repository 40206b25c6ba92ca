"""Every verb on a Redis location (``TM_QUEUE_URL=redis://…``), end to end through the real
``tm`` against a real redis-server: what each prints and its exit code, as on the file backend;
nothing is written under the data dir. The errors (a bad URL, an unreachable server, a wrong
password) are one line with the exit code of the README's table."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from redis_server import RedisServer, free_port
from tm_testing import FlowFiles, Tm, wait_until
from tracemind.backend import open_backend


@pytest.fixture
def redis_tm(tm: Tm, redis_location: str, data_root: Path) -> Tm:
    """``tm`` on a fresh Redis key prefix, with daemon mode on."""
    tm.env.update(TM_QUEUE_URL=redis_location, TM_ENABLE_DAEMON="1")
    return tm


def _ok(tm: Tm, *args: str | os.PathLike[str], **kwargs: Any) -> Any:
    """``tm ARGS --json``: exit 0 required, its stdout parsed."""
    proc = tm(*args, "--json", **kwargs)
    assert proc.returncode == 0, f"tm {args} -> {proc.returncode}\n{proc.stdout}{proc.stderr}"
    return json.loads(proc.stdout)


def _age_results(location: str, *, hours: float) -> None:
    """Move the finish time of every finished task ``hours`` back (in the set retention reads)."""
    backend: Any = open_backend(location, durable=True, env={})
    client, done = backend.connection.client, backend.connection.keys.done
    back_ms = int(hours * 3600 * 1000)
    client.zadd(done, {t: s - back_ms for t, s in client.zrange(done, 0, -1, withscores=True)})


def _burst(tm: Tm, *, workers: int = 2) -> None:
    proc = tm("workers", "start", "-n", str(workers), "--burst", timeout_s=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


@pytest.mark.slow
def test_the_queue_verbs_and_the_dlq_on_redis(
    redis_tm: Tm, flows: FlowFiles, tmp_path: Path, data_root: Path
) -> None:
    tm = redis_tm
    echo = flows.write("echo", "tracemind.steps.echo")
    marker = tmp_path / "marker"
    picky = flows.write("picky", "tm_test_hooks.fail_unless_file", retry={"max_attempts": 1})

    # enqueue: one task; with a key twice (one task); a batch of three; run --detached
    single = _ok(tm, "enqueue", echo, "-i", '{"n": 1}')
    assert single["duplicate"] is False
    keyed = _ok(tm, "enqueue", echo, "-i", '{"n": 2}', "--idempotency-key", "k-1")
    again = _ok(tm, "enqueue", echo, "-i", '{"n": 2}', "--idempotency-key", "k-1")
    assert (again["task_id"], again["duplicate"]) == (keyed["task_id"], True)
    batch = tmp_path / "batch.jsonl"
    batch.write_text("".join(json.dumps({"n": n}) + "\n" for n in range(3)))
    batched = _ok(tm, "enqueue", echo, "--inputs", batch)
    assert (batched["enqueued"], batched["duplicates"], len(batched["task_ids"])) == (3, 0, 3)
    detached = _ok(tm, "run", echo, "--detached", "-i", '{"n": 9}')
    failing = _ok(tm, "enqueue", picky, "-i", json.dumps({"marker": str(marker)}))["task_id"]
    waiting = [single["task_id"], keyed["task_id"], *batched["task_ids"], detached["task_id"]]

    # queue stats, task show, task ls: seven tasks waiting
    assert _ok(tm, "queue", "stats")["pending"] == 7
    assert _ok(tm, "task", "show", single["task_id"])["status"] == "pending"
    listed = _ok(tm, "task", "ls", "--status", "pending")
    assert {task["task_id"] for task in listed} == {*waiting, failing}
    # task cancel: a waiting task never runs
    cancelled = waiting.pop()
    assert tm("task", "cancel", cancelled).returncode == 0
    assert _ok(tm, "task", "show", cancelled)["status"] == "cancelled"

    # workers start --burst runs them all, then stops; task wait: 0 succeeded, 1 dead
    _burst(tm)
    assert tm("task", "wait", *waiting, "--timeout", "10").returncode == 0
    assert tm("task", "wait", failing, "--timeout", "10").returncode == 1
    shown = _ok(tm, "task", "show", single["task_id"])
    assert shown["status"] == "succeeded" and shown["attempts"] == 1
    assert _ok(tm, "queue", "stats")["pending"] == 0

    # dlq ls / show / requeue (runs again, succeeds) / purge
    [dead] = _ok(tm, "dlq", "ls")
    assert dead["task_id"] == failing
    assert "marker missing" in json.dumps(_ok(tm, "dlq", "show", failing))
    marker.touch()
    assert tm("dlq", "requeue", failing).returncode == 0
    assert _ok(tm, "dlq", "ls") == []
    _burst(tm, workers=1)
    assert _ok(tm, "task", "show", failing)["status"] == "succeeded"
    marker.unlink()
    second = _ok(tm, "enqueue", picky, "-i", json.dumps({"marker": str(marker)}))["task_id"]
    _burst(tm, workers=1)
    assert [entry["task_id"] for entry in _ok(tm, "dlq", "ls")] == [second]
    assert tm("dlq", "purge", second).returncode == 0
    assert _ok(tm, "dlq", "ls") == []
    assert tm("dlq", "show", second).returncode == 1  # not in the DLQ any more

    # queue prune: results older than TM_RESULT_TTL_S go (dry run first: counts only); the
    # finish times are moved two hours back, past the shortest TTL allowed (an hour)
    _age_results(tm.env["TM_QUEUE_URL"], hours=2)
    hour = {"TM_RESULT_TTL_S": "3600", "TM_IDEMPOTENCY_TTL_S": "3600"}
    dry = _ok(tm, "queue", "prune", "--dry-run", env=hour)
    assert dry["dry_run"] is True and dry["removed"]["results"] == len(waiting) + 2
    assert _ok(tm, "task", "show", single["task_id"])["status"] == "succeeded"
    pruned = _ok(tm, "queue", "prune", env=hour)
    assert pruned["removed"]["results"] == dry["removed"]["results"]
    assert tm("task", "show", single["task_id"]).returncode == 1
    assert _ok(tm, "queue", "prune", "--dry-run", env=hour)["removed"]["results"] == 0

    # nothing of it went to the data dir
    assert not data_root.exists()


@pytest.mark.slow
def test_the_daemon_its_status_endpoint_and_a_cron_trigger_on_redis(
    redis_tm: Tm, flows: FlowFiles, tmp_path: Path
) -> None:
    tm = redis_tm
    echo = flows.write("echo", "tracemind.steps.echo")
    config = tmp_path / "triggers.yaml"
    tick = {"id": "tick", "kind": "cron", "cron": "@every 1s", "flow": str(echo), "input": {}}
    config.write_text(yaml.safe_dump({"version": 1, "triggers": [tick]}))
    state = tmp_path / "state"
    status = f"http://127.0.0.1:{free_port()}"
    # daemon start (detached): returns once up
    started = tm("daemon", "start", "--state-dir", state, "--workers", "2",
                 "--status-bind", status.removeprefix("http://"),
                 "--enable-triggers", "--triggers-config", config)  # fmt: skip
    try:
        assert started.returncode == 0 and "daemon started" in started.stdout, started.stderr
        # ps: running and ready, itself in the cluster, the trigger listed
        wait_until(lambda: _ok(tm, "daemon", "ps", "--state-dir", state)["ready"], 20, "ready")
        ps = _ok(tm, "daemon", "ps", "--state-dir", state)
        meta = json.loads((state / "daemon.json").read_text())
        assert [m["instance_id"] for m in ps["cluster"]] == [meta["instance_id"]]
        assert ps["queue_url"] == tm.env["TM_QUEUE_URL"] and ps["queue_error"] is None
        assert [trigger["id"] for trigger in ps["triggers"]] == ["tick"]
        # an enqueued task runs; the cron trigger's tasks run too
        task_id = _ok(tm, "enqueue", echo, "-i", '{"n": 1}')["task_id"]
        assert tm("task", "wait", task_id, "--timeout", "30").returncode == 0
        wait_until(lambda: len(_ok(tm, "task", "ls", "--status", "succeeded")) >= 3, 20,
                   "two cron tasks run")  # fmt: skip
        # the status endpoint answers from the same queue
        with urllib.request.urlopen(f"{status}/readyz", timeout=5) as response:
            assert response.status == 200
        with urllib.request.urlopen(f"{status}/status", timeout=5) as response:
            doc = json.loads(response.read())
        assert doc["instance_id"] == meta["instance_id"] and doc["queue_error"] is None
        assert doc["queue_url"] == tm.env["TM_QUEUE_URL"]
    finally:
        # daemon stop: drained and gone from the cluster; ps then exits 3
        stopped = tm("daemon", "stop", "--state-dir", state, timeout_s=60)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    after = tm("daemon", "ps", "--state-dir", state, "--json")
    assert after.returncode == 3 and json.loads(after.stdout)["cluster"] == []


def _one_line(proc: subprocess.CompletedProcess[str], exit_code: int, text: str) -> None:
    assert proc.returncode == exit_code, proc.stdout + proc.stderr
    assert proc.stdout == "" and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("tm: error: ") and text in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


VERBS = [
    ("enqueue", "{echo}", "-i", "{{}}"),
    ("enqueue", "{echo}", "--inputs", "{batch}"),
    ("queue", "stats"),
    ("queue", "prune", "--dry-run"),
    ("task", "show", "01a245e6556a0000389105"),
    ("task", "ls"),
    ("task", "cancel", "01a245e6556a0000389105"),
    ("task", "wait", "01a245e6556a0000389105", "--timeout", "1"),
    ("dlq", "ls"),
    ("dlq", "requeue", "--all"),
    ("workers", "start", "-n", "1", "--burst"),
    ("daemon", "start", "--state-dir", "{state}"),
]


@pytest.mark.parametrize("verb", VERBS, ids=[" ".join(v[:2]) for v in VERBS])
def test_an_unreachable_server_is_one_line_and_exit_1_for_every_verb(
    tm: Tm, flows: FlowFiles, tmp_path: Path, verb: tuple[str, ...]
) -> None:
    # Given a location where no server listens
    port = free_port()
    tm.env.update(TM_QUEUE_URL=f"redis://127.0.0.1:{port}/0", TM_ENABLE_DAEMON="1")
    batch = tmp_path / "batch.jsonl"
    batch.write_text('{"n": 1}\n{"n": 2}\n')
    names = {"echo": flows.write("echo", "tracemind.steps.echo"), "batch": batch}
    names["state"] = tmp_path / "state"
    # When the verb runs, then it says so in one line, naming host and port, and exits 1
    args = [word.format(**names) for word in verb]
    _one_line(tm(*args, timeout_s=60), 1, f"redis 127.0.0.1:{port}: unreachable")


def test_a_wrong_or_missing_password_is_one_line_and_exit_1(
    tm: Tm, flows: FlowFiles, tmp_path: Path
) -> None:
    server = RedisServer(tmp_path / "redis", password="right-secret").start()
    try:
        echo = flows.write("echo", "tracemind.steps.echo")
        where = f"127.0.0.1:{server.port}/0"
        wrong = tm("enqueue", echo, "-i", "{}", env={"TM_QUEUE_URL": f"redis://:nope@{where}"})
        _one_line(wrong, 1, "authentication failed")
        assert "nope" not in wrong.stderr
        missing = tm("queue", "stats", env={"TM_QUEUE_URL": f"redis://{where}"})
        _one_line(missing, 1, "authentication required")
        # (the right one, from TM_REDIS_PASSWORD, works)
        right = {"TM_QUEUE_URL": f"redis://{where}", "TM_REDIS_PASSWORD": "right-secret"}
        assert tm("queue", "stats", env=right).returncode == 0
    finally:
        server.stop()


@pytest.mark.parametrize(
    "url",
    ["redis://127.0.0.1:notaport/0", "redis://127.0.0.1:6379/x", "redis://127.0.0.1:6379/0?x=1"],
)
def test_a_bad_redis_url_is_one_line_and_exit_2(tm: Tm, url: str) -> None:
    _one_line(tm("queue", "stats", env={"TM_QUEUE_URL": url}), 2, "")
