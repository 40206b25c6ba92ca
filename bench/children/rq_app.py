"""RQ's side of the Redis figure: the no-op job, and its enqueue loop.

Usage: python rq_app.py URL N — N ``Queue.enqueue`` calls (timed loop), printing the rate as
JSON; the jobs stay queued for ``rq worker --burst`` (the drain). RQ's defaults throughout.
"""

from __future__ import annotations

import json
import sys
import time


def noop() -> None:
    """The job."""


def main() -> int:
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
