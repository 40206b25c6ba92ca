"""Durable per-task enqueue through the library: ``submit`` called once per task.

Usage: python ours_enqueue.py FLOW N — with TM_FILE_QUEUE_V2=1 and TM_DATA_DIR set by the bench.
"""

from __future__ import annotations

import json
import sys
import time


def main() -> int:
    flow_path, count = sys.argv[1], int(sys.argv[2])
    started = time.perf_counter()
    from tracemind import config
    from tracemind.backend.file.stores import open_stores
    from tracemind.backend.location import data_location
    from tracemind.flows import load_flow

    if not config.durable():
        raise SystemExit("ours_enqueue: TM_FILE_QUEUE_V2 must be on")
    flow = load_flow(flow_path)
    submitter = open_stores(
        config.DataDirs.of(*data_location().file_dirs()), durable=True
    ).submitter(config.idempotency_ttl_s())
    ready = time.perf_counter()
    for i in range(count):
        submitter.submit(flow, {"i": i})
    loop_s = time.perf_counter() - ready
    print(json.dumps({"setup_s": ready - started, "loop_s": loop_s, "rate": count / loop_s}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
