"""Build a backlog through the library: ``QueueSubmitter.submit_many`` in chunks (each chunk one
durable batch with TM_FILE_QUEUE_V2=1), without idempotency keys unless ``--keys`` is given
(then task ``i`` has the key ``k<i>``).

Usage: python ours_seed.py FLOW N CHUNK [--keys] — prints the seconds taken
and three task ids of the backlog (first, middle, last) as JSON.
"""

from __future__ import annotations

import json
import sys
import time


def main() -> int:
    flow_path, count, chunk = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    keyed = sys.argv[4:] == ["--keys"]
    started = time.perf_counter()
    from tracemind import config
    from tracemind.backend.file.stores import open_stores
    from tracemind.backend.location import data_location
    from tracemind.flows import load_flow
    from tracemind.submit import Submission

    flow = load_flow(flow_path)
    stores = open_stores(config.DataDirs.of(*data_location().file_dirs()), durable=config.durable())
    stores.queue.prepare()  # the directories, even for no task
    submitter = stores.submitter(config.idempotency_ttl_s())
    ids: dict[str, str] = {}
    for first in range(0, count, chunk):
        batch = [
            Submission({"i": i}, f"k{i}" if keyed else None)
            for i in range(first, min(count, first + chunk))
        ]
        results = submitter.submit_many(flow, batch)
        for label, index in (("first", 0), ("middle", count // 2), ("last", count - 1)):
            if first <= index < first + len(batch):
                ids[label] = results[index - first].task_id
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "durable": config.durable(), "ids": ids}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
