"""Guarantee 8 (idempotency keys) of the Backend contract, against every backend."""

from __future__ import annotations

import json
import subprocess
import threading

from backend_testing import LEASE_S, Subject, process_command, process_env
from tracemind.queue.protocol import Failure
from tracemind.submit import Submission, SubmitResult

TTL_S = 3600.0


def _leased_ids(subject: Subject) -> list[str]:
    ids = []
    while (lease := subject.backend.queue.lease("drain", LEASE_S)) is not None:
        ids.append(lease.task_id)
    return ids


def test_a_duplicate_of_a_waiting_task_names_it_and_enqueues_nothing(subject: Subject) -> None:
    submitter = subject.backend.submitter(TTL_S)
    first = submitter.submit(subject.snapshot, {"n": 1}, idempotency_key="k")
    again = (
        subject.reopen().submitter(TTL_S).submit(subject.snapshot, {"n": 2}, idempotency_key="k")
    )

    assert (first.duplicate, again.duplicate, again.task_id) == (False, True, first.task_id)
    assert subject.backend.queue.stats().pending == 1


def test_a_duplicate_of_a_task_in_flight_or_retrying_names_it(subject: Subject) -> None:
    task_id = subject.submit("k")
    lease = subject.lease(task_id)
    submitter = subject.backend.submitter(TTL_S)
    assert submitter.submit(subject.snapshot, {}, idempotency_key="k") == SubmitResult(
        task_id, True
    )
    subject.backend.queue.retry(lease, Failure("try again"), 60.0)
    assert submitter.submit(subject.snapshot, {}, idempotency_key="k") == SubmitResult(
        task_id, True
    )


def test_a_succeeded_task_blocks_its_key_for_the_ttl_after_it_finished(subject: Subject) -> None:
    # Given a keyed task that succeeded
    task_id = subject.succeed("k")
    submitter = subject.backend.submitter(TTL_S)
    # When the same key comes within the TTL, then it is a duplicate
    subject.clock.advance(TTL_S - 1)
    assert submitter.submit(subject.snapshot, {}, idempotency_key="k") == SubmitResult(
        task_id, True
    )
    # When it comes after the TTL, then it makes a new task
    subject.clock.advance(2)
    again = submitter.submit(subject.snapshot, {}, idempotency_key="k")
    assert not again.duplicate and again.task_id != task_id
    assert _leased_ids(subject) == [again.task_id]


def test_the_key_of_a_dead_task_does_not_block(subject: Subject) -> None:
    dead = subject.kill("k")

    again = subject.backend.submitter(TTL_S).submit(subject.snapshot, {}, idempotency_key="k")

    assert not again.duplicate and again.task_id != dead
    assert _leased_ids(subject) == [again.task_id]


def test_the_key_of_a_cancelled_task_does_not_block(subject: Subject) -> None:
    cancelled = subject.submit("k")
    assert subject.backend.cancel(cancelled) == "cancelled"

    again = subject.backend.submitter(TTL_S).submit(subject.snapshot, {}, idempotency_key="k")

    assert not again.duplicate and again.task_id != cancelled
    assert _leased_ids(subject) == [again.task_id]


def test_a_key_repeated_within_one_batch_resolves_to_its_first_task(subject: Subject) -> None:
    results = subject.backend.submitter(TTL_S).submit_many(
        subject.snapshot,
        [Submission({"n": 1}, "a"), Submission({"n": 2}, "b"), Submission({"n": 3}, "a")],
    )

    assert [r.duplicate for r in results] == [False, False, True]
    assert results[2].task_id == results[0].task_id
    assert sorted(_leased_ids(subject)) == sorted([results[0].task_id, results[1].task_id])


def _agree(answers: list[dict[str, list[object]]], keys: list[str], subject: Subject) -> None:
    """Every submitter names the same task for each key, exactly one made it, and the queue
    holds exactly that task per key."""
    for key in keys:
        ids = {answer[key][0] for answer in answers}
        made = [answer[key] for answer in answers if answer[key][1] is False]
        assert len(ids) == 1 and len(made) == 1, (key, [answer[key] for answer in answers])
    expected = sorted(str(answers[0][key][0]) for key in keys)
    assert sorted(_leased_ids(subject)) == expected


def test_concurrent_submitters_in_threads_agree_on_one_task_per_key(subject: Subject) -> None:
    # Given four threads, each with its own view of the backend, and the same twenty keys
    keys = [f"key-{n}" for n in range(20)]
    views = [subject.reopen() for _ in range(4)]
    start = threading.Barrier(len(views), timeout=30)
    answers: list[dict[str, list[object]]] = [{} for _ in views]

    def submit_all(index: int) -> None:
        submitter = views[index].submitter(TTL_S)
        start.wait()
        order = keys if index % 2 == 0 else keys[::-1]
        for key in order:
            result = submitter.submit(subject.snapshot, {}, idempotency_key=key)
            answers[index][key] = [result.task_id, result.duplicate]

    # When they all submit at once
    threads = [threading.Thread(target=submit_all, args=(i,)) for i in range(len(views))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    # Then they agree
    _agree(answers, keys, subject)


def test_concurrent_submitters_in_two_processes_agree_on_one_task_per_key(subject: Subject) -> None:
    # Given two processes that open the same location and wait for one signal
    keys = [f"key-{n}" for n in range(30)]
    go = subject.tmp_path / "go"
    procs = [
        subprocess.Popen(
            process_command("submit-keys", subject.backend.location, subject.flow_path, go, *order),
            env=process_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for order in (keys, keys[::-1])
    ]
    try:
        # When both submit the same keys at once (in opposite orders)
        go.touch()
        outputs = [proc.communicate(timeout=60) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    answers = [json.loads(out) for out, _ in outputs]
    # Then they agree
    _agree(answers, keys, subject)


def test_submitters_killed_at_random_instants_leave_one_task_per_key(subject: Subject) -> None:
    # Given submitter processes SIGKILLed at random instants while they submit the same keys
    import random
    import signal
    import time

    keys = [f"key-{n}" for n in range(1000)]
    go = subject.tmp_path / "go"
    go.touch()
    command = process_command("submit-keys", subject.backend.location, subject.flow_path, go, *keys)
    rng = random.Random(12)
    for _ in range(4):
        # (killed once it has made a random number of new tasks: then it is mid-way, however
        # fast this machine submits)
        target = subject.backend.queue.stats().pending + rng.randint(1, 150)
        proc = subprocess.Popen(command, env=process_env(), stdout=subprocess.DEVNULL)
        deadline_s = time.monotonic() + 30
        while subject.backend.queue.stats().pending < target and time.monotonic() < deadline_s:
            time.sleep(0.001)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    subject.backend.maintain()  # (what a serving process does: settle what dead ones left)
    made_before = subject.backend.queue.stats().pending
    assert 4 <= made_before < len(keys)  # each kill landed while keys were being submitted
    # When one more submitter runs to the end
    done = subprocess.run(
        command, env=process_env(), capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    answers = json.loads(done.stdout)
    # Then every key names exactly one task, and the queue holds exactly those tasks
    assert sorted(_leased_ids(subject)) == sorted(str(answers[key][0]) for key in keys)
