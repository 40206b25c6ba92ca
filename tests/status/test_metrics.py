"""/metrics: task counters and durations by flow id, named for what they count, and the daemon
process's own metrics from the client library."""

from __future__ import annotations

import json
import signal
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from tm_testing import FlowFiles, Tm, free_port, wait_until

pytestmark = pytest.mark.slow


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_counters_and_durations_by_flow_and_process_metrics_of_the_daemon(
    tm: Tm, flows: FlowFiles, tmp_path: Path
) -> None:
    # Given a daemon with a status server, two successes of one flow and a dead task of another
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    state_dir = tmp_path / "state"
    proc = tm.start(
        "daemon", "start", "--foreground", "--inherit-logs", "--workers", "1",
        "--state-dir", state_dir, "--status-bind", f"127.0.0.1:{port}",
        stdout=tmp_path / "daemon.out", env={"TM_ENABLE_DAEMON": "1"},
    )  # fmt: skip
    try:

        def ready() -> bool:
            try:
                return bool(_get(url + "/readyz"))
            except OSError:
                return False

        wait_until(ready, 30, "readiness")
        ok = flows.write("greeter", "tracemind.steps.echo")
        bad = flows.write("breaker", "tracemind.steps.fail", retry={"max_attempts": 1})
        ids = [tm("enqueue", ok, "-i", f'{{"n": {n}}}').stdout.strip() for n in range(2)]
        ids.append(tm("enqueue", bad, "-i", '{"message": "no"}').stdout.strip())

        def settled() -> bool:
            shown = [tm("task", "show", task_id, "--json") for task_id in ids]
            return all(
                p.stdout and json.loads(p.stdout)["status"] in ("succeeded", "dead") for p in shown
            )

        wait_until(settled, 30, "the tasks to settle")

        # When /metrics is scraped (after the heartbeat that carries the last outcome)
        def scraped() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
            samples = _samples(_get(url + "/metrics"))
            dead = samples.get(("tracemind_tasks_dead_lettered_total", (("flow_id", "breaker"),)))
            return samples if dead == 1 else None

        samples = wait_until(scraped, 10, "the outcomes in /metrics")
        daemon_pid = json.loads((state_dir / "daemon.json").read_text())["pid"]
        registry = CollectorRegistry()
        ProcessCollector(pid=lambda: daemon_pid, registry=registry)
        expected_start = registry.get_sample_value("process_start_time_seconds")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0

    # Then the counters are by flow id and named for what they count
    def value(name: str, flow: str) -> float | None:
        return samples.get((name, (("flow_id", flow),)))

    assert value("tracemind_tasks_succeeded_total", "greeter") == 2
    assert value("tracemind_tasks_succeeded_total", "breaker") == 0
    assert value("tracemind_tasks_dead_lettered_total", "greeter") == 0
    assert not any(name.startswith("tracemind_tasks_acked") for name, _ in samples)
    # ... and so are the durations: one attempt of each task, in its flow's histogram
    assert value("tracemind_task_duration_seconds_count", "greeter") == 2
    assert value("tracemind_task_duration_seconds_count", "breaker") == 1
    assert (
        samples[
            ("tracemind_task_duration_seconds_bucket", (("flow_id", "greeter"), ("le", "+Inf")))
        ]
        == 2
    )
    # And no label carries a task id
    labels = {v for _, pairs in samples for k, v in pairs if k == "flow_id"}
    assert labels == {"greeter", "breaker"} and not labels & set(ids)
    # And the process metrics are the daemon's (not the status server's): same start time
    assert samples[("process_start_time_seconds", ())] == expected_start
    assert samples[("process_resident_memory_bytes", ())] > 0
    assert samples[("process_open_fds", ())] > 0
    assert ("python_info", ()) in {(n, ()) for n, _ in samples}


def test_flows_past_the_limit_are_counted_together() -> None:
    from tracemind.worker.pool import MAX_FLOWS, OTHER_FLOWS, Outcomes

    # Given more distinct flow ids than the limit (and a task without one)
    outcomes = Outcomes()
    for n in range(MAX_FLOWS + 5):
        outcomes.add("succeeded", 0.01, 1, f"flow-{n}")
    outcomes.add("dead-lettered", 0.2, 3, None)

    # Then the first ones keep their own label, the rest share one, and the totals add up
    flows = outcomes.to_dict()["flows"]
    assert len(flows) == MAX_FLOWS + 1 and "flow-0" in flows
    assert flows[OTHER_FLOWS]["counts"] == {"succeeded": 5, "dead-lettered": 1}
    assert outcomes.counts == {"succeeded": MAX_FLOWS + 5, "dead-lettered": 1}
    assert sum(f["duration_count"] for f in flows.values()) == outcomes.duration_count


def test_records_removed_by_retention_are_counted_by_kind(tmp_path: Path) -> None:
    # Given a live daemon's state (lock held, fresh heartbeat) that pruned some records
    import os
    import time

    from tracemind.backend import open_backend
    from tracemind.daemon.state import StateDir
    from tracemind.status.metrics import QueueCollector

    state = StateDir(tmp_path / "state")
    state.prepare()
    lock = state.acquire_lock(1.0)
    assert lock is not None
    try:
        state.write_json(state.meta_path, {"instance_id": "abc", "pid": os.getpid()})
        state.write_json(
            state.heartbeat_path,
            {"instance_id": "abc", "at": time.time(), "pruned": {"results": 3, "keys": 1}},
        )
        backend = open_backend(f"file://{tmp_path}", durable=False)
        # When the collector runs, Then the counter carries each kind
        [family] = [
            f
            for f in QueueCollector(state, backend).collect()
            if f.name == "tracemind_pruned_records"
        ]
        counts = {s.labels["kind"]: s.value for s in family.samples if s.name.endswith("_total")}
        assert counts == {"results": 3.0, "keys": 1.0}
    finally:
        os.close(lock)
