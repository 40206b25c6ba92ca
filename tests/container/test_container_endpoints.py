"""The running container as probes and operators see it: health and status endpoints, metrics,
JSON logs, and its confinement (non-root, read-only root filesystem).

One stack (pytest-docker, compose.yaml) serves every test here; the host's ``tm`` enqueues work
into the bind-mounted data directory.
"""

from __future__ import annotations

import json
import secrets
from typing import TYPE_CHECKING, Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

if TYPE_CHECKING:
    from conftest import Project


pytestmark = [pytest.mark.container]

ENDPOINTS = ("/livez", "/healthz", "/readyz", "/status", "/metrics")


def _keys(doc: Any, prefix: str = "") -> set[str]:
    """Every key path of a JSON document (``queue.pending`` ...), to compare shapes."""
    if not isinstance(doc, dict):
        return set()
    paths = set()
    for key, value in doc.items():
        paths.add(prefix + key)
        paths |= _keys(value, f"{prefix}{key}.")
    return paths


def _metrics(body: str) -> dict[str, dict[str, float]]:
    """{family name: {sample name + labels: value}} from Prometheus text."""
    families: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(body):
        samples = families.setdefault(f"{family.name}:{family.type}", {})
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return families


SLEEP_FLOW = "ctest-sleep"  # the flow id of sleep.yaml (conftest.FLOWS)


def _succeeded(stack: Project) -> float:
    families = _metrics(stack.get("/metrics").body)
    samples = families["tracemind_tasks_succeeded:counter"]
    return samples.get(f"tracemind_tasks_succeeded_total{{flow_id={SLEEP_FLOW}}}", 0.0)


def _enqueued(stack: Project) -> float:
    families = _metrics(stack.get("/metrics").body)
    return families["tracemind_tasks_enqueued:counter"]["tracemind_tasks_enqueued_total{}"]


def _inflight(stack: Project) -> float:
    families = _metrics(stack.get("/metrics").body)
    return families["tracemind_queue_inflight:gauge"]["tracemind_queue_inflight{}"]


def _bodies(stack: Project) -> dict[str, str]:
    return {path: stack.get(path).body for path in ENDPOINTS}


@pytest.mark.timeout(120)
def test_up_wait_is_healthy_and_every_endpoint_answers_without_task_inputs(
    stack: Project, docker_services: Any
) -> None:
    # Given the stack `docker compose up --wait` brought up: healthy, port on 127.0.0.1 only.
    state = stack.state()
    assert state["Health"]["Status"] == "healthy"
    ports = stack.container().attrs["NetworkSettings"]["Ports"][f"{stack.container_port}/tcp"]
    assert ports == [{"HostIp": "127.0.0.1", "HostPort": str(stack.port)}]
    assert docker_services.port_for("tracemind", stack.container_port) == stack.port

    # And work with a secret-looking input: one task done (and counted: the counters come with
    # the once-a-second heartbeat), one in flight.
    secret = f"sk-live-{secrets.token_hex(12)}"
    succeeded_before = _succeeded(stack)
    done_id = stack.enqueue("sleep.yaml", {"seconds": 0, "api_key": secret})
    assert stack.wait_task(done_id)["status"] == "succeeded"
    stack.wait_for(
        "the ack to be counted", lambda: _succeeded(stack) > succeeded_before, timeout_s=10
    )
    running_id = stack.enqueue("sleep.yaml", {"seconds": 5, "password": secret})
    stack.wait_for(
        "the slow task to be leased",
        lambda: stack.tm_json("task", "show", running_id)["status"] == "inflight",
        timeout_s=15,
    )
    stack.wait_for("both enqueues to be counted", lambda: _enqueued(stack) >= 2, timeout_s=10)
    # (/status and /metrics serve bodies up to a second old: wait until they show the lease)
    stack.wait_for("the counts to show the lease", lambda: _inflight(stack) >= 1, timeout_s=5)
    stack.wait_for(
        "the status to show the lease",
        lambda: stack.get("/status").json()["queue"]["inflight"] >= 1,
        timeout_s=5,
    )

    # When every endpoint is read while the task runs.
    live, health, ready = (stack.get(p) for p in ("/livez", "/healthz", "/readyz"))
    status = stack.get("/status")
    metrics = stack.get("/metrics")
    host_ps = stack.tm_json("daemon", "ps")
    during = _bodies(stack)

    # Then the probes answer 200.
    assert (live.status, health.status, ready.status) == (200, 200, 200)
    assert live.json()["status"] == "alive"
    assert ready.json() == {"ready": True}

    # And /status is `tm daemon ps --json`: same keys, and it sees the running task.
    assert status.status == 200 and status.content_type.startswith("application/json")
    doc = status.json()
    assert _keys(doc) == _keys(host_ps)
    assert doc["running"] is True and doc["state"] == "running"
    assert doc["instance_id"] == host_ps["instance_id"] and doc["pid"] == host_ps["pid"]
    assert doc["workers"]["alive"] == doc["workers"]["configured"] == 2
    assert doc["queue"]["inflight"] >= 1 and doc["workers"]["busy"] >= 1

    # And /metrics is Prometheus text with the queue gauges, counters and the histogram.
    assert metrics.status == 200 and metrics.content_type.startswith("text/plain")
    families = _metrics(metrics.body)
    for gauge in (
        "tracemind_queue_pending",
        "tracemind_queue_delayed",
        "tracemind_queue_inflight",
        "tracemind_queue_oldest_pending_age_seconds",
        "tracemind_workers_alive",
    ):
        assert f"{gauge}:gauge" in families, gauge
    for counter in (
        "tracemind_tasks_enqueued",
        "tracemind_tasks_succeeded",
        "tracemind_tasks_retried",
        "tracemind_tasks_dead_lettered",
    ):
        assert f"{counter}:counter" in families, counter
    assert families["tracemind_workers_alive:gauge"]["tracemind_workers_alive{}"] == 2
    assert families["tracemind_queue_inflight:gauge"]["tracemind_queue_inflight{}"] >= 1
    succeeded = families["tracemind_tasks_succeeded:counter"]
    assert succeeded[f"tracemind_tasks_succeeded_total{{flow_id={SLEEP_FLOW}}}"] >= 1
    assert families["tracemind_tasks_enqueued:counter"]["tracemind_tasks_enqueued_total{}"] >= 2
    histogram = families["tracemind_task_duration_seconds:histogram"]
    count = histogram[f"tracemind_task_duration_seconds_count{{flow_id={SLEEP_FLOW}}}"]
    assert count >= 1
    assert (
        histogram[f"tracemind_task_duration_seconds_bucket{{flow_id={SLEEP_FLOW},le=+Inf}}"]
        == count
    )
    # And the daemon's process metrics, from the client library.
    assert families["process_resident_memory_bytes:gauge"]["process_resident_memory_bytes{}"] > 0

    # And no body ever carries a task's input (nor, once done, its result).
    assert stack.wait_task(running_id)["status"] == "succeeded"
    after = _bodies(stack)
    for path, body in [*during.items(), *after.items()]:
        assert secret not in body, f"{path} leaks a task input"
    assert secret in json.dumps(stack.tm_json("task", "show", done_id))  # it was really there


@pytest.mark.timeout(90)
def test_every_stdout_line_is_json_including_gunicorn(stack: Project) -> None:
    # Given some work done (a success, a dead task) and probes served.
    secret = f"tok-{secrets.token_hex(10)}"
    ok = stack.enqueue("sleep.yaml", {"seconds": 0, "token": secret})
    dead = stack.enqueue("fail.yaml", {"message": "expected failure", "token": secret})
    assert stack.wait_task(ok)["status"] == "succeeded"
    assert stack.wait_task(dead)["status"] == "dead"
    assert stack.get("/metrics").status == 200

    # When the container's stdout is read.
    lines = stack.logs(stdout=True, stderr=False)

    # Then every line is one JSON object with a level, a timestamp and an event.
    events = []
    for number, line in enumerate(lines, 1):
        try:
            event = json.loads(line)
        except ValueError:
            pytest.fail(f"stdout line {number} is not JSON: {line!r}")
        assert isinstance(event, dict), line
        assert {"level", "timestamp", "event"} <= event.keys(), line
        events.append(event)
    loggers = {event.get("logger") for event in events}
    # gunicorn's own error log and access log go through the same JSON rendering.
    assert {"gunicorn.error", "gunicorn.access", "tracemind.daemon", "tracemind.worker"} <= loggers
    access = [e for e in events if e["logger"] == "gunicorn.access"]
    assert any(e["path"] == "/metrics" and e["status"] == 200 for e in access), access[-5:]
    # The health check probes /readyz every few seconds; probes are not logged by default.
    assert all(e["event"] == "request served" for e in access)
    assert not any(e["path"] in ("/livez", "/readyz", "/healthz") for e in access)
    assert any(e.get("task_id") == ok and e["event"] == "task succeeded" for e in events)
    # And stderr carries nothing that is not JSON either, and no log line carries a task input.
    stderr = stack.logs(stdout=False, stderr=True)
    for line in stderr:
        assert line.startswith("{") and isinstance(json.loads(line), dict), line
    assert not [line for line in lines + stderr if secret in line]


@pytest.mark.timeout(60)
def test_runs_as_the_compose_user_with_a_read_only_root(stack: Project) -> None:
    container = stack.container()
    config, host = container.attrs["Config"], container.attrs["HostConfig"]

    # The configuration compose.yaml asked for.
    assert config["User"] == f"{stack.uid}:{stack.gid}"
    assert host["ReadonlyRootfs"] is True
    assert "ALL" in (host["CapDrop"] or [])
    assert "no-new-privileges:true" in (host["SecurityOpt"] or [])
    assert "/tmp" in (host["Tmpfs"] or {})

    # Every process (tini, the daemon, its workers, gunicorn) runs as TM_UID:TM_GID, not root,
    # with no capabilities.
    code, out = stack.exec(
        "python3",
        "-c",
        "import json, os\n"
        "procs = {}\n"
        "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
        "    try:\n"
        "        status = dict(l.split(':', 1) for l in open(f'/proc/{pid}/status') if ':' in l)\n"
        "        cmd = open(f'/proc/{pid}/cmdline', 'rb').read().replace(b'\\0', b' ').decode()\n"
        "    except OSError:\n"
        "        continue\n"
        "    procs[pid] = dict(uid=status['Uid'].split(), gid=status['Gid'].split(),\n"
        "                      cap=status['CapEff'].strip(), cmd=cmd)\n"
        "print(json.dumps(procs))",
    )
    assert code == 0, out
    processes = json.loads(out)
    assert any("daemon start" in p["cmd"] for p in processes.values()), processes
    assert any("gunicorn" in p["cmd"] for p in processes.values()), processes
    assert processes["1"]["cmd"].startswith("/usr/bin/tini"), processes["1"]
    assert stack.uid != 0
    for pid, proc in processes.items():
        assert set(proc["uid"]) == {str(stack.uid)}, (pid, proc)
        assert set(proc["gid"]) == {str(stack.gid)}, (pid, proc)
        assert int(proc["cap"], 16) == 0, (pid, proc)

    # Writing anywhere but /data, /tmp and /dev/shm fails; those three work.
    for path in ("/probe", "/app/probe", "/opt/venv/probe", "/etc/probe", "/var/tmp/probe"):
        code, out = stack.exec("sh", "-c", f"echo x > {path}")
        assert code != 0, f"{path} is writable"
        assert "Read-only file system" in out or "Permission denied" in out, out
    code, out = stack.exec("sh", "-c", "echo x > /probe")
    assert "Read-only file system" in out, out
    for directory in ("/data", "/tmp", "/dev/shm"):
        probe = f"{directory}/probe-{secrets.token_hex(4)}"
        code, out = stack.exec("sh", "-c", f"echo x > {probe} && rm {probe}")
        assert code == 0, f"{directory}: {out}"
    # And the container's own layer stayed untouched after all the work it did.
    assert container.diff() in (None, [])
