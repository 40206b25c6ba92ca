"""Listing tasks newest first (``tm task ls``, ``Client.list_tasks``): every state, filters,
a limit, and a cost that follows the limit rather than the queue's size."""

from __future__ import annotations

from typing import Any

import pytest

from tm_testing import FakeClock, ListingLog, Tm, make_task
from tracemind.client import Client
from tracemind.config import DataDirs
from tracemind.errors import UsageError
from tracemind.queue.protocol import Failure, TaskStatus

LEASE_S = 30.0


@pytest.fixture
def client(dirs: DataDirs, clock: FakeClock) -> Client:
    return Client(dirs.queue.parent, clock=clock)


def _one_of_each(client: Client, clock: FakeClock) -> dict[str, str]:
    """A task in every state, made one second apart (oldest first); state → task id."""
    queue = client._backend.queue
    ids: dict[str, str] = {}
    for state in ("succeeded", "dead", "cancelled", "inflight", "pending", "delayed"):
        task = make_task(clock, max_attempts=1, due_in_s=3600 if state == "delayed" else 0)
        task.record["flow_id"] = "odd" if state == "dead" else "even"
        queue.enqueue([task])
        ids[state] = task.task_id
        if state in ("succeeded", "dead", "inflight"):
            lease = queue.lease("c1", LEASE_S)
            assert lease is not None and lease.task_id == task.task_id
            if state == "succeeded":
                queue.ack(lease, {})
            elif state == "dead":
                queue.dead_letter(lease, Failure("boom"))
        if state == "cancelled":
            assert queue.cancel(task.task_id) == "cancelled"
        clock.advance(1)
    return ids


def test_every_state_is_listed_newest_first(client: Client, clock: FakeClock) -> None:
    ids = _one_of_each(client, clock)
    listed = client.list_tasks()
    assert [(i.task_id, i.status.value) for i in listed] == [
        (ids[s], s) for s in ("delayed", "pending", "inflight", "cancelled", "dead", "succeeded")
    ]


def test_filters_and_limit(client: Client, clock: FakeClock) -> None:
    ids = _one_of_each(client, clock)
    assert [i.task_id for i in client.list_tasks("dead")] == [ids["dead"]]
    both = client.list_tasks(["pending", "succeeded"])
    assert [i.task_id for i in both] == [ids["pending"], ids["succeeded"]]
    assert [i.task_id for i in client.list_tasks(flow="odd")] == [ids["dead"]]
    assert len(client.list_tasks(limit=2)) == 2
    with pytest.raises(UsageError, match="unknown status"):
        client.list_tasks("gone")
    with pytest.raises(UsageError, match="limit"):
        client.list_tasks(limit=0)


def test_listing_a_few_reads_a_few_buckets_of_a_long_backlog(
    client: Client, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a backlog spread over 100 seconds (100 buckets)
    queue = client._backend.queue
    for _ in range(100):
        queue.enqueue([make_task(clock)])
        clock.advance(1)
    listed = ListingLog().install(monkeypatch).listed
    # When the 5 newest pending tasks are listed
    newest = client.list_tasks("pending", limit=5)
    # Then only the newest buckets were read
    assert len(newest) == 5 and [i.status for i in newest] == [TaskStatus.PENDING] * 5
    assert len(listed) <= 12, listed


def test_tm_task_ls(tm: Tm, flows: Any) -> None:
    flow = flows.write("echo", "tracemind.steps.echo")
    first = tm.json("enqueue", flow, "--json")["task_id"]
    second = tm.json("enqueue", flow, "--delay", "1h", "--json")["task_id"]
    rows = tm.json("task", "ls", "--json")
    assert [(r["task_id"], r["status"]) for r in rows] == [(second, "delayed"), (first, "pending")]
    assert [r["task_id"] for r in tm.json("task", "ls", "--status", "pending", "--json")] == [first]
    bad = tm("task", "ls", "--status", "nope")
    assert bad.returncode == 2 and "unknown status" in bad.stderr
