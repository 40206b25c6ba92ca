"""SqliteHuey's default per-task enqueue: call the task N times in one process.

Usage: python huey_enqueue.py N — the SQLite file comes from BENCH_HUEY_DB.
"""

from __future__ import annotations

import json
import sys
import time


def main() -> int:
    count = int(sys.argv[1])
    started = time.perf_counter()
    from huey_app import noop

    ready = time.perf_counter()
    for i in range(count):
        noop(i)
    loop_s = time.perf_counter() - ready
    print(json.dumps({"setup_s": ready - started, "loop_s": loop_s, "rate": count / loop_s}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
