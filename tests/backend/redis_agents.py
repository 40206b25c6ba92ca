"""Processes that use a Redis location, for the multi-process tests (``python -m redis_agents``).

Each agent appends one line per event to an append-only log (one ``write`` per line, so lines of
several processes never interleave), on the wall clock, and stops by itself: at a stop file, or
after ``--max-s``. Redis failures (a restarting server) are logged and retried, never fatal.

``submit``  submit keys ``k0..k{n-1}`` once each, after a start file appears:
            ``<task_id> <duplicate 0|1> <key>``
``produce`` enqueue tasks one at a time until the stop file: ``enqueued <task_id> <time>``
            after each enqueue returned (an acknowledged enqueue)
``consume`` recover, lease, run (append ``start``, sleep ``--work-s``), ack (append ``acked``
            once ack returned);
            ``--hold N`` leases N tasks, appends ``start`` for each and then sleeps, holding
            them, until killed
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from tracemind.backend import open_backend
from tracemind.errors import QueueError
from tracemind.queue.names import new_task_id
from tracemind.queue.protocol import NewTask
from tracemind.queue.records import new_record

RETRY_PAUSE_S = 0.05


def append(log: Path, line: str) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def task(max_attempts: int = 3) -> NewTask:
    now_s = time.time()
    task_id = new_task_id(now_s)
    flow = {"flow": {"id": "agent"}, "source_path": "agent.json", "sha256": "0" * 64}
    record = new_record(
        task_id=task_id, flow=flow, inputs={}, max_attempts=max_attempts, enqueued_at=now_s
    )
    return NewTask(task_id, record, now_s)


def submit(args: argparse.Namespace) -> None:
    from tracemind.flows import load_flow
    from tracemind.submit import Submission

    backend = open_backend(args.location, durable=True)
    snapshot = load_flow(args.flow)
    Path(args.log + ".ready").touch()
    deadline = time.monotonic() + args.max_s
    while not Path(args.start).exists() and time.monotonic() < deadline:
        time.sleep(0.001)
    submitter = backend.submitter(ttl_s=3600.0)
    for n in range(args.n):
        key = f"k{n}"
        [result] = submitter.submit_many(snapshot, [Submission({"n": n}, idempotency_key=key)])
        append(Path(args.log), f"{result.task_id} {int(result.duplicate)} {key}")


def produce(args: argparse.Namespace) -> None:
    backend = open_backend(args.location, durable=True)
    log, stop = Path(args.log), Path(args.stop)
    deadline = time.monotonic() + args.max_s
    count = 0
    while not stop.exists() and time.monotonic() < deadline and count < args.n:
        new = task()
        try:
            backend.queue.enqueue([new])
        except QueueError as exc:
            append(log, f"error {exc}")
            time.sleep(RETRY_PAUSE_S)
            continue
        count += 1
        append(log, f"enqueued {new.task_id} {time.time():.3f}")


def consume(args: argparse.Namespace) -> None:
    backend = open_backend(args.location, durable=True)
    queue = backend.queue
    log, stop = Path(args.log), Path(args.stop)
    consumer = f"{args.name}-{os.getpid()}"
    if args.hold:
        for _ in range(args.hold):
            lease = queue.lease(consumer, args.lease_s)
            assert lease is not None
            append(log, f"start {lease.task_id} {lease.attempt} {consumer}")
        Path(args.log + ".holding").touch()
        time.sleep(args.max_s)
        return
    deadline = time.monotonic() + args.max_s
    while not stop.exists() and time.monotonic() < deadline:
        try:
            queue.recover()
            lease = queue.lease(consumer, args.lease_s)
            if lease is None:
                queue.wait_for_work(0.1)
                continue
            append(log, f"start {lease.task_id} {lease.attempt} {consumer}")
            time.sleep(args.work_s)
            queue.ack(lease, {"by": consumer})
            append(log, f"acked {lease.task_id} {time.time():.3f}")
        except QueueError as exc:
            append(log, f"error {exc}")
            time.sleep(RETRY_PAUSE_S)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="redis_agents")
    parser.add_argument("verb", choices=["submit", "produce", "consume"])
    parser.add_argument("location")
    parser.add_argument("log")
    parser.add_argument("--stop", default="/nonexistent/stop")
    parser.add_argument("--start", default="")
    parser.add_argument("--flow", default="")
    parser.add_argument("-n", type=int, default=1_000_000)
    parser.add_argument("--name", default="c")
    parser.add_argument("--lease-s", type=float, default=2.0)
    parser.add_argument("--hold", type=int, default=0)
    parser.add_argument("--work-s", type=float, default=0.0)
    parser.add_argument("--max-s", type=float, default=60.0)
    args = parser.parse_args(argv)
    {"submit": submit, "produce": produce, "consume": consume}[args.verb](args)


if __name__ == "__main__":
    main(sys.argv[1:])
