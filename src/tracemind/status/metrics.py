"""Prometheus metrics: gauges read from the queue (so they include what any process enqueued),
counters and the duration histogram as reported by this daemon's workers since it started, by
``flow_id`` (flow ids, never task ids: at most ``worker.pool.MAX_FLOWS`` values plus ``_other``),
and the daemon process's own CPU, memory, open files and start time (``process_*``, from the
client library's process collector)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from tracemind.backend.protocol import Backend
from tracemind.daemon.state import StateDir, liveness


class QueueCollector(Collector):
    def __init__(self, state: StateDir, backend: Backend) -> None:
        self.state = state
        self.backend = backend

    def collect(self) -> Iterator[Metric]:
        stats, dead, _ = self.backend.counts()
        live = liveness(self.state)
        beat: dict[str, Any] = live.heartbeat or {} if live.running else {}
        yield _gauge(
            "tracemind_queue_pending", "Tasks due and waiting for a worker.", stats.pending
        )
        yield _gauge(
            "tracemind_queue_delayed", "Tasks waiting for a retry or due time.", stats.delayed
        )
        yield _gauge("tracemind_queue_inflight", "Tasks leased by a worker.", stats.inflight)
        yield _gauge(
            "tracemind_dlq_entries",
            "Tasks in the dead-letter queue.",
            dead,
        )
        yield _gauge(
            "tracemind_queue_oldest_pending_age_seconds",
            "How long the oldest due task has waited (0 when none).",
            stats.oldest_pending_age_s or 0.0,
        )
        workers = beat.get("workers") or {}
        yield _gauge("tracemind_workers_alive", "Worker processes alive.", workers.get("alive", 0))
        yield _gauge(
            "tracemind_daemon_up", "1 while the daemon's heartbeat is fresh.", live.running
        )
        outcomes = beat.get("outcomes") or {}
        flows = _by_flow(outcomes)
        for name, key, text in (
            ("tracemind_tasks_succeeded", "succeeded", "Tasks that succeeded."),
            ("tracemind_tasks_retried", "retrying", "Failed attempts scheduled for a retry."),
            ("tracemind_tasks_dead_lettered", "dead-lettered", "Tasks moved to the DLQ."),
        ):
            counter = CounterMetricFamily(
                name, text + " Since this daemon started.", labels=["flow_id"]
            )
            for flow_id, flow in flows.items():
                counter.add_metric([flow_id], float((flow.get("counts") or {}).get(key, 0)))
            yield counter
        enqueued = CounterMetricFamily(
            "tracemind_tasks_enqueued",
            "Tasks enqueued (by any process) since this daemon started: those its workers took "
            "up for a first attempt plus those still waiting for one (per heartbeat).",
        )
        enqueued.add_metric([], float(beat.get("enqueued_total", 0)))
        yield enqueued
        pruned = CounterMetricFamily(
            "tracemind_pruned_records",
            "Records retention removed since this daemon started, by kind (results, keys, "
            "dlq_audit, quarantine, temporaries).",
            labels=["kind"],
        )
        for kind, count in sorted((beat.get("pruned") or {}).items()):
            pruned.add_metric([str(kind)], float(count))
        yield pruned
        yield _histogram(flows)


def _by_flow(outcomes: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The outcomes per flow id; a daemon that reports no breakdown counts under ``""``."""
    flows = outcomes.get("flows")
    if isinstance(flows, dict):
        return flows
    return {"": outcomes} if outcomes else {}


def _daemon_pid(state: StateDir) -> int | None:
    live = liveness(state)
    pid = (live.meta or {}).get("pid") if live.running else None
    return pid if isinstance(pid, int) else None


def _gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, text, value=float(value))


def _histogram(flows: dict[str, dict[str, Any]]) -> HistogramMetricFamily:
    histogram = HistogramMetricFamily(
        "tracemind_task_duration_seconds", "Time a worker spent on one attempt.", labels=["flow_id"]
    )
    for flow_id, outcomes in flows.items():
        bounds = outcomes.get("duration_buckets_s") or []
        counts = outcomes.get("duration_bucket_counts") or []
        buckets = [(f"{b:g}", float(c)) for b, c in zip(bounds, counts, strict=False)]
        buckets.append(("+Inf", float(outcomes.get("duration_count", 0))))
        sum_s = float(outcomes.get("duration_sum_s", 0.0))
        histogram.add_metric([flow_id], buckets, sum_value=sum_s)
    return histogram


def render(state: StateDir, backend: Backend) -> tuple[bytes, str]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(QueueCollector(state, backend))
    # The daemon's process (the status server is its child, in the same PID namespace); none
    # while no daemon runs.
    pid = _daemon_pid(state)
    if pid is not None:
        ProcessCollector(pid=lambda: pid, registry=registry)
    PlatformCollector(registry=registry)
    return generate_latest(registry), CONTENT_TYPE_LATEST
