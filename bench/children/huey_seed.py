"""Seed SqliteHuey's queue with N no-op tasks, fast: each task serialized by Huey itself
(``huey.serialize_task``, what ``huey.enqueue`` stores), the rows inserted into Huey's own
``task`` table in transactions of ``CHUNK`` rows. The database is the one N calls of ``noop(i)``
would leave; only the seeding is faster (it is not what is measured).

Usage: python huey_seed.py N — the SQLite file comes from BENCH_HUEY_DB.
"""

from __future__ import annotations

import json
import sys
import time

CHUNK = 10_000


def main() -> int:
    count = int(sys.argv[1])
    started = time.perf_counter()
    from huey_app import huey, noop

    storage = huey.storage
    insert = "insert into task (queue, data, priority) values (?, ?, ?)"
    for first in range(0, count, CHUNK):
        rows = [
            (storage.name, huey.serialize_task(noop.s(i)), 0)
            for i in range(first, min(count, first + CHUNK))
        ]
        with storage.db(commit=True) as cursor:
            cursor.executemany(insert, rows)
    queued = storage.queue_size()
    if queued != count:
        raise SystemExit(f"huey_seed: {queued} tasks queued, expected {count}")
    print(json.dumps({"seconds": time.perf_counter() - started, "queued": queued}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
