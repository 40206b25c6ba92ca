"""A task record means the same on every backend: what a submitter writes is what a worker
leases (the retry and timeout policy resolved at submit, the first due time)."""

from __future__ import annotations

from backend_testing import LEASE_S, Subject
from tracemind.queue.records import task_policy
from tracemind.submit import Submission


def test_a_submitted_record_carries_its_policy_and_first_due_time(subject: Subject) -> None:
    # Given a keyed and a plain task submitted in one batch, the plain one due now
    submitter = subject.backend.submitter(3600.0)
    now_s = subject.clock()
    submitter.submit_many(
        subject.snapshot,
        [Submission({"n": 1}, idempotency_key="k"), Submission({"n": 2}, due_s=now_s - 1)],
    )
    # When a consumer leases them
    leased = []
    while (lease := subject.backend.queue.lease("c", LEASE_S)) is not None:
        leased.append(lease.record)
    # Then each record carries the flow's policy and when it was first due
    assert sorted(record["input"]["n"] for record in leased) == [1, 2]
    for record in leased:
        assert record["policy"] == task_policy(subject.snapshot.flow)
        expected_due = now_s - 1 if record["input"]["n"] == 2 else now_s
        assert record["due_at"] == expected_due
