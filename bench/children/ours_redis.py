"""Our side of the Redis figure, through the library on a ``redis://`` location.

Usage:
  python ours_redis.py enqueue URL FLOW N   per-task ``submit`` (timed loop), then one batch of N
                                            (timed): prints both rates as JSON
  python ours_redis.py seed URL FLOW N      one batch of N no-op tasks (untimed)
  python ours_redis.py consume URL NAME     lease + ack until the queue has nothing left: one of
                                            the drain's consumer processes
"""

from __future__ import annotations

import json
import sys
import time


def enqueue(url: str, flow_path: str, count: int) -> None:
    from tracemind.backend import open_backend
    from tracemind.flows import load_flow
    from tracemind.submit import Submission

    submitter = open_backend(url, durable=True).submitter(86_400.0)
    flow = load_flow(flow_path)
    started = time.perf_counter()
    for i in range(count):
        submitter.submit(flow, {"i": i})
    per_task_s = time.perf_counter() - started
    started = time.perf_counter()
    submitter.submit_many(flow, [Submission({"i": i}) for i in range(count)])
    batch_s = time.perf_counter() - started
    print(json.dumps({"rate": count / per_task_s, "batch_rate": count / batch_s}))


def seed(url: str, flow_path: str, count: int) -> None:
    from tracemind.backend import open_backend
    from tracemind.flows import load_flow
    from tracemind.submit import Submission

    submitter = open_backend(url, durable=True).submitter(86_400.0)
    submitter.submit_many(load_flow(flow_path), [Submission({"i": i}) for i in range(count)])


def consume(url: str, name: str) -> None:
    from tracemind.backend import open_backend

    queue = open_backend(url, durable=True).queue
    while True:
        lease = queue.lease(name, 30.0)
        if lease is None:
            stats = queue.stats()
            if stats.pending + stats.delayed + stats.inflight == 0:
                return
            queue.wait_for_work(0.05)
            continue
        queue.ack(lease, {})


def main() -> int:
    verb, url = sys.argv[1], sys.argv[2]
    if verb == "enqueue":
        enqueue(url, sys.argv[3], int(sys.argv[4]))
    elif verb == "seed":
        seed(url, sys.argv[3], int(sys.argv[4]))
    else:
        consume(url, sys.argv[3])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
