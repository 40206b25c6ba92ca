"""The crash storm: workers, the daemon and enqueuers are SIGKILLed at random instants while
tasks with and without idempotency keys flow, some of them through a retry. Counted exactly: no
task is lost, every extra execution ran on a worker that was killed, and each key has exactly
one task."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from daemon_harness import DaemonEnv

from tm_testing import task_record, tm_command, wait_until

ROUNDS = 20
KEYED_PER_ROUND = 40
PLAIN_PER_ROUND = 4


def _executions(exec_dir: Path) -> dict[str, list[int]]:
    """task id → the pid of each worker process that executed it."""
    runs: dict[str, list[int]] = defaultdict(list)
    for path in exec_dir.glob("exec-*.log"):
        pid = int(path.stem.split("-")[1])
        for line in path.read_text().splitlines():
            if line:
                runs[line.split()[0]].append(pid)
    return runs


def _parent_of(pid: int) -> int | None:
    """The parent pid of a live process (None once it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[1])


def _enqueue_until_it_succeeds(
    env: DaemonEnv, args: list[str], rng: random.Random, kill: bool
) -> list[str]:
    """Run ``tm enqueue``, SIGKILLed at a random instant the first time when ``kill``; retry
    as a client would until one run exits 0; returns that run's task ids."""
    for attempt in range(10):
        proc = subprocess.Popen(
            [*tm_command(), "enqueue", *args],
            env=env.env,
            cwd=env.root,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        if kill and attempt == 0:
            time.sleep(rng.uniform(0.0, 0.4))
            proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=60)
        if proc.returncode == 0:
            doc = json.loads(out)
            return list(doc["task_ids"]) if "task_ids" in doc else [doc["task_id"]]
        assert proc.returncode == -signal.SIGKILL, err
    raise AssertionError("tm enqueue never succeeded")


@pytest.mark.slow
def test_a_crash_storm_loses_nothing_and_reruns_only_what_a_kill_interrupted(
    daemon_env: DaemonEnv,
) -> None:
    rng = random.Random(20261205)
    flow = daemon_env.flow("storm", "tracemind.steps.sleep")
    retried = daemon_env.flow("retried", "fail_first", retry={"max_attempts": 10, "base_ms": 5})
    planned: dict[str, int] = {}  # task id → executions it needs (2 for one that retries)
    meta = daemon_env.start_ok("--workers", "2", "--runtime", "tm_daemon_helpers:counting")
    killed: set[int] = set()
    accepted: set[str] = set()  # ids a successful enqueue printed
    for round_no in range(ROUNDS):
        # Given tasks flowing in: a keyed batch (its first run killed at a random instant,
        # then retried) and plain tasks
        batch = daemon_env.root / f"batch-{round_no}.jsonl"
        batch.write_text(
            "".join(
                json.dumps({"k": f"key-{round_no}-{n}", "seconds": 0.01}) + "\n"
                for n in range(KEYED_PER_ROUND)
            )
        )
        keyed_args = [str(flow), "--json", "--inputs", str(batch), "--idempotency-key-field", "k"]
        accepted.update(_enqueue_until_it_succeeds(daemon_env, keyed_args, rng, kill=True))
        for n in range(PLAIN_PER_ROUND):
            target = retried if n % 2 else flow
            plain_args = [str(target), "--json", "-i", json.dumps({"seconds": 0.01})]
            ids = _enqueue_until_it_succeeds(daemon_env, plain_args, rng, kill=False)
            accepted.update(ids)
            planned.update(dict.fromkeys(ids, 2 if target == retried else 1))
        # When a worker is killed every round, and the daemon itself every fifth round
        daemon_pid = int(meta["pid"])
        pids = wait_until(
            lambda pid=daemon_pid: [p for p in daemon_env.worker_pids() if _parent_of(p) == pid],
            20,
            "a live worker of the daemon",
        )
        if round_no % 5 == 4:
            killed.update(pids)
            daemon_env.kill_daemon(meta, group=True)
            wait_until(lambda: not daemon_env.ps()["running"], 20, "the daemon to be gone")
            meta = daemon_env.start_ok("--workers", "2", "--runtime", "tm_daemon_helpers:counting")
        else:
            victim = rng.choice(pids)
            os.kill(victim, signal.SIGKILL)
            killed.add(victim)
        time.sleep(rng.uniform(0.0, 0.2))

    # Then the queue drains
    def drained() -> bool:
        queue = daemon_env.ps()["queue"]
        return queue["pending"] == queue["inflight"] == queue["delayed"] == 0

    wait_until(drained, 180, "the queue to drain")
    # And every accepted task succeeded: nothing lost
    done_dir = daemon_env.data_dir / "queue" / "done"
    records = {path.stem: task_record(path) for path in done_dir.glob("*/*.json")}
    assert accepted <= set(records), f"lost: {sorted(accepted - set(records))[:5]}"
    assert not list((daemon_env.data_dir / "dlq").glob("*.json"))
    # And each key has exactly one task, the one its successful enqueue reported
    per_key = Counter(r["idempotency_key"] for r in records.values() if r["idempotency_key"])
    keys = {f"key-{r}-{n}" for r in range(ROUNDS) for n in range(KEYED_PER_ROUND)}
    assert per_key == Counter(dict.fromkeys(keys, 1))
    # And a task ran more than once only when a killed worker had run it
    runs = _executions(daemon_env.exec_dir)
    for task_id in records:
        pids = runs.get(task_id, [])
        assert pids, f"{task_id} succeeded without being executed"
        extra = len(pids) - planned.get(task_id, 1)
        assert sum(1 for pid in pids if pid in killed) >= extra, (task_id, pids, killed)
    assert len(killed) >= ROUNDS  # the storm really killed something every round
    went_through_retry = [t for t, needed in planned.items() if needed == 2]
    assert went_through_retry and all(len(runs[t]) >= 2 for t in went_through_retry)
