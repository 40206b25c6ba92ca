"""The Redis backend across real processes: submitters racing on keys, a consumer SIGKILLed while
it holds leases, a server that requires a password. Executions are counted in append-only logs
(see ``redis_agents.py``); every process is bounded in time and stopped by its PID."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from redis_server import RedisServer, TlsFiles
from tm_testing import ECHO_FLOW, Processes, make_task, wait_until
from tracemind.backend import open_backend
from tracemind.errors import QueueError
from tracemind.queue.protocol import TaskStatus

AGENTS_DIR = Path(__file__).parent
AGENT_TIMEOUT_S = 60.0


def agent(processes: Processes, *args: str) -> subprocess.Popen[bytes]:
    """``python -m redis_agents ARGS`` (see that module), tracked for teardown."""
    path = os.pathsep.join([str(AGENTS_DIR), *filter(None, sys.path)])
    env = {**os.environ, "PYTHONPATH": path}
    return processes.start([sys.executable, "-m", "redis_agents", *args], env=env)


def lines(log: Path) -> list[list[str]]:
    return [line.split() for line in log.read_text().splitlines()] if log.exists() else []


@pytest.mark.slow
def test_two_processes_submitting_the_same_keys_agree_on_one_task_per_key(
    redis_location: str, processes: Processes, tmp_path: Path
) -> None:
    # Given two processes ready to submit the same 200 keys at the same instant
    flow = tmp_path / "echo.json"
    flow.write_text(json.dumps(ECHO_FLOW))
    start = tmp_path / "go"
    logs = [tmp_path / f"submit-{n}.log" for n in range(2)]
    procs = [
        agent(
            processes,
            *("submit", redis_location, str(log), "--flow", str(flow), "-n", "200"),
            *("--start", str(start)),
        )
        for log in logs
    ]
    for log in logs:
        wait_until(Path(f"{log}.ready").exists, AGENT_TIMEOUT_S, f"{log.name} ready")
    # When they start together
    start.touch()
    for proc in procs:
        assert proc.wait(timeout=AGENT_TIMEOUT_S) == 0
    # Then each key resolved to exactly one task, created by exactly one of them
    rows = [row for log in logs for row in lines(log)]
    assert len(rows) == 400
    by_key: dict[str, set[str]] = {}
    created: Counter[str] = Counter()
    for task_id, duplicate, key in rows:
        by_key.setdefault(key, set()).add(task_id)
        created[key] += duplicate == "0"
    assert len(by_key) == 200
    assert all(len(ids) == 1 for ids in by_key.values())
    assert set(created.values()) == {1}
    assert open_backend(redis_location, durable=True, env={}).queue.stats().pending == 200


@pytest.mark.slow
def test_a_sigkilled_consumers_leases_come_back_after_the_lease_time_and_nothing_runs_twice(
    redis_location: str, processes: Processes, tmp_path: Path
) -> None:
    # Given 300 tasks, and a consumer that leased 5 of them (2 s leases) and is SIGKILLed
    backend = open_backend(redis_location, durable=True, env={})
    tasks = [make_task(time.time) for _ in range(300)]
    backend.queue.enqueue(tasks)
    log, stop = tmp_path / "runs.log", tmp_path / "stop"
    holder = agent(processes, "consume", redis_location, str(log), "--hold", "5", "--name", "h")
    wait_until(Path(f"{log}.holding").exists, AGENT_TIMEOUT_S, "the holder's leases")
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=AGENT_TIMEOUT_S)
    held = {tid for verb, tid, attempt, _ in lines(log) if verb == "start"}
    assert len(held) == 5
    # When two other consumers drain the queue (recovering lapsed leases as they go)
    consumers = [  # (60 s leases: a pause of theirs on a busy machine never lets one lapse)
        agent(
            processes,
            *("consume", redis_location, str(log), "--stop", str(stop), "--name", n),
            *("--lease-s", "60"),
        )
        for n in ("a", "b")
    ]

    def drained() -> bool:
        stats = backend.queue.stats()
        return stats.pending + stats.delayed + stats.inflight == 0

    wait_until(drained, AGENT_TIMEOUT_S, "the queue drained")
    stop.touch()
    for proc in consumers:
        assert proc.wait(timeout=AGENT_TIMEOUT_S) == 0
    # Then every task succeeded; the held ones ran twice (attempt 2), every other one once
    starts = Counter(row[1] for row in lines(log) if row[0] == "start")
    assert len(starts) == 300
    assert {t for t, n in starts.items() if n != 1} == held
    assert all(starts[t] == 2 for t in held)
    for task in tasks:
        info = backend.queue.find(task.task_id)
        assert info is not None and info.status is TaskStatus.SUCCEEDED
        assert info.attempts == (2 if task.task_id in held else 1)


def test_a_wrong_or_missing_password_is_one_line_without_the_password(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    redis_server.password = "right-secret"
    redis_server.start()
    url = f"redis://:wrong-secret@127.0.0.1:{redis_server.port}/0"
    where = f"redis 127.0.0.1:{redis_server.port}"

    with pytest.raises(QueueError) as wrong:
        open_backend(url, durable=True, env={}).queue.stats()
    with pytest.raises(QueueError) as missing:
        open_backend(redis_server.url, durable=True, env={}).queue.stats()
    from_env = open_backend(
        redis_server.url, durable=True, env={"TM_REDIS_PASSWORD": "right-secret"}
    )

    # (an enqueue goes over the module's own RESP client: the same lines)
    with pytest.raises(QueueError) as wrong_on_wire:
        open_backend(url, durable=True, env={}).queue.enqueue([make_task(time.time)])
    with pytest.raises(QueueError) as missing_on_wire:
        open_backend(redis_server.url, durable=True, env={}).queue.enqueue([make_task(time.time)])

    assert str(wrong.value) == f"{where}: authentication failed (wrong user or password)"
    assert str(missing.value).startswith(f"{where}: authentication required")
    assert (str(wrong_on_wire.value), str(missing_on_wire.value)) == (
        str(wrong.value),
        str(missing.value),
    )
    assert "secret" not in str(wrong.value) + str(missing.value)
    from_env.queue.enqueue([make_task(time.time)])
    assert from_env.queue.stats().pending == 1
    assert from_env.problems() == []


def test_a_full_server_refuses_an_enqueue_with_one_line_and_keeps_what_it_had(
    redis_server: RedisServer,
) -> None:
    # Given a server holding one task, then set to refuse writes beyond its memory
    redis_server.start()
    backend = open_backend(redis_server.url, durable=True, env={})
    backend.queue.enqueue([make_task(time.time)])
    client = backend.connection.client  # type: ignore[attr-defined]
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", "1")
    # When a task is enqueued, the refusal is one line naming the server
    with pytest.raises(QueueError) as caught:
        backend.queue.enqueue([make_task(time.time)])
    assert str(caught.value) == (
        f"redis 127.0.0.1:{redis_server.port}: the server is out of memory (maxmemory)"
    )
    # Then readers still work and nothing was half-written
    assert backend.queue.stats().pending == 1


def test_a_server_that_denies_the_client_is_one_line_for_readers_and_submissions() -> None:
    # Given a server that answers every command as a Redis in protected mode does for a client
    # from another host (a real TCP server on 127.0.0.1: a real redis-server in that mode would
    # have to listen beyond the loopback interface)
    denied = b"-DENIED Redis is running in protected mode because protected mode is enabled\r\n"
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                with contextlib.suppress(OSError):
                    conn.recv(1 << 20)
                    conn.sendall(denied)

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        backend = open_backend(f"redis://127.0.0.1:{port}/0", durable=True, env={})
        # When a reader and a submission use it
        with pytest.raises(QueueError) as reading:
            backend.queue.stats()
        with pytest.raises(QueueError) as writing:
            backend.queue.enqueue([make_task(time.time)])
    finally:
        stop.set()
        server.join(timeout=10)
        listener.close()
    # Then each fails with the same one line
    expected = f"redis 127.0.0.1:{port}: the server refuses clients from other hosts"
    assert str(reading.value).startswith(expected)
    assert str(writing.value) == str(reading.value)


@pytest.mark.slow
def test_three_consumers_drain_2000_tasks_while_one_is_sigkilled_mid_run(
    redis_location: str, processes: Processes, tmp_path: Path
) -> None:
    # Given 2,000 tasks and three consumer processes at work (2 ms per task)
    backend = open_backend(redis_location, durable=True, env={})
    tasks = [make_task(time.time) for _ in range(2000)]
    backend.queue.enqueue(tasks)
    log, stop = tmp_path / "runs.log", tmp_path / "stop"
    # (the one to be killed leases for 2 s, so its lease comes back soon; the others for 60 s,
    # so that a pause of theirs on a busy machine never lets a lease lapse)
    consumers = {
        name: agent(
            processes,
            *("consume", redis_location, str(log), "--stop", str(stop), "--name", name),
            *("--work-s", "0.002", "--lease-s", lease_s),
        )
        for name, lease_s in (("a", "2"), ("b", "60"), ("c", "60"))
    }
    # When one of them is SIGKILLed mid-run
    wait_until(lambda: len(lines(log)) >= 600, AGENT_TIMEOUT_S, "a third of the work")
    os.kill(consumers["a"].pid, signal.SIGKILL)
    consumers["a"].wait(timeout=AGENT_TIMEOUT_S)
    held = _leases_of(redis_location, "a-")  # (before they lapse: 2 s)

    def drained() -> bool:
        stats = backend.queue.stats()
        return stats.pending + stats.delayed + stats.inflight == 0

    wait_until(drained, AGENT_TIMEOUT_S, "the queue drained")
    stop.touch()
    for name in ("b", "c"):
        assert consumers[name].wait(timeout=AGENT_TIMEOUT_S) == 0
    # Then every task succeeded; what the killed one held when it died ran again (attempt 2),
    # and nothing else ran twice
    rows = lines(log)
    starts = Counter(row[1] for row in rows if row[0] == "start")
    assert len(starts) == 2000
    assert len(held) <= 1  # (a consumer holds one lease at a time)
    assert {t for t, n in starts.items() if n > 1} <= held
    for task in tasks:
        info = backend.queue.find(task.task_id)
        assert info is not None and info.status is TaskStatus.SUCCEEDED
        assert info.attempts == (2 if task.task_id in held else 1), task.task_id


def _leases_of(location: str, consumer_prefix: str) -> set[str]:
    """Ids of the tasks that consumers named ``consumer_prefix…`` hold now (read from Redis)."""
    backend: Any = open_backend(location, durable=True, env={})
    client, keys = backend.connection.client, backend.connection.keys
    held = client.zrange(keys.leases, 0, -1)
    return {
        t for t in held if str(client.hget(keys.task(t), "consumer")).startswith(consumer_prefix)
    }


def test_rediss_works_with_a_trusted_ca_and_is_one_line_without_it(
    tmp_path: Path, processes: Processes
) -> None:
    # Given a TLS-only server whose certificate a private CA signed
    tls = TlsFiles(tmp_path / "tls")
    server = RedisServer(tmp_path / "redis", tls=tls).start()
    probe = (
        "import sys, time; from tracemind.backend import open_backend; "
        "from tracemind.queue.protocol import NewTask; from tracemind.queue.names import new_task_id; "
        "b = open_backend(sys.argv[1], durable=True, env={}); "
        "b.queue.enqueue([NewTask(new_task_id(), {'max_attempts': 1}, time.time())]); "
        "print(b.queue.stats().pending)"
    )
    try:
        # When a client trusts the CA (SSL_CERT_FILE), and when it does not
        trusted = subprocess.run(
            [sys.executable, "-c", probe, server.url],
            env={**os.environ, "SSL_CERT_FILE": str(tls.ca)},
            capture_output=True,
            text=True,
            timeout=AGENT_TIMEOUT_S,
            check=False,
        )
        untrusted = open_backend(server.url, durable=True, env={})
        with pytest.raises(QueueError) as reading:
            untrusted.queue.stats()
        with pytest.raises(QueueError) as writing:
            untrusted.queue.enqueue([make_task(time.time)])
    finally:
        server.stop()
    # Then both clients (the submission's own and redis-py) talk TLS; without trust, one line
    assert trusted.returncode == 0, trusted.stderr
    assert trusted.stdout.split() == ["1"]
    expected = f"redis 127.0.0.1:{server.port}: TLS failed ("
    assert str(reading.value).startswith(expected) and str(writing.value).startswith(expected)
    assert "certificate" in str(reading.value)


class OldRedis:
    """A TCP server on 127.0.0.1 that speaks enough RESP to pass for Redis 6.2 (HELLO unknown,
    CLIENT accepted, INFO and PING answered): the version check must stop at it."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.listener.settimeout(0.1)
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._talk, args=(conn,), daemon=True).start()

    def _talk(self, conn: socket.socket) -> None:
        info = b"# Server\r\nredis_version:6.2.14\r\n"
        replies = {
            b"HELLO": b"-ERR unknown command 'HELLO'\r\n",
            b"CLIENT": b"+OK\r\n",
            b"INFO": b"$%d\r\n%s\r\n" % (len(info), info),
            b"PING": b"+PONG\r\n",
        }
        with conn, contextlib.suppress(OSError, ValueError):
            conn.settimeout(5)
            stream = conn.makefile("rb")
            while not self.stop.is_set():
                header = stream.readline()
                if not header.startswith(b"*"):
                    return
                words = []
                for _ in range(int(header[1:])):
                    size = int(stream.readline()[1:])
                    words.append(stream.read(size + 2)[:-2])
                conn.sendall(replies.get(words[0].upper(), b"-ERR not in this fake\r\n"))

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        self.listener.close()


def test_a_server_older_than_redis_7_is_refused_with_one_line() -> None:
    old = OldRedis()
    try:
        backend = open_backend(f"redis://127.0.0.1:{old.port}/0", durable=True, env={})
        with pytest.raises(QueueError) as reading:
            backend.queue.stats()
        problems = backend.problems()
    finally:
        old.close()
    expected = f"redis 127.0.0.1:{old.port}: Redis 7.0 or later is needed (this is 6.2.14)"
    assert str(reading.value) == expected
    assert problems == [expected]
