"""RQ's side of the Redis figure: the no-op job, and its enqueue loop.

Usage:
  python rq_app.py URL N        N ``Queue.enqueue`` calls (timed loop), printing the rate as JSON;
                                the jobs stay queued for ``rq worker --burst`` (the drain)
  python rq_app.py last URL     after the drain: how many jobs finished and when the last one
                                ended (epoch seconds, from RQ's own job records), as JSON

RQ's defaults throughout.
"""

from __future__ import annotations

import json
import sys
import time


def noop() -> None:
    """The job."""


def last(url: str) -> None:
    from datetime import UTC

    from redis import Redis
    from rq import Queue
    from rq.job import Job

    connection = Redis.from_url(url)
    queue = Queue(connection=connection)
    ids = queue.finished_job_registry.get_job_ids()
    ended = [
        job.ended_at.replace(tzinfo=job.ended_at.tzinfo or UTC).timestamp()
        for job in Job.fetch_many(ids, connection=connection)
        if job is not None and job.ended_at is not None
    ]
    print(json.dumps({"finished": len(ended), "last_ended_s": max(ended, default=None)}))


def main() -> int:
    if sys.argv[1] == "last":
        last(sys.argv[2])
        return 0
    import rq_app
    from redis import Redis
    from rq import Queue

    url, count = sys.argv[1], int(sys.argv[2])
    queue = Queue(connection=Redis.from_url(url))
    started = time.perf_counter()
    for _ in range(count):
        queue.enqueue(rq_app.noop)
    print(json.dumps({"rate": count / (time.perf_counter() - started)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
