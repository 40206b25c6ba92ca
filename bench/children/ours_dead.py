"""Fill a dead-letter directory with N entries as a worker writes them (``DeadLetterStore.put``
of a ``dead_entry`` of a real task record; not synced: the seeding is not what is measured).

Usage: python ours_dead.py FLOW N — the directories come from TM_DATA_DIR.
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
    from tracemind.queue.names import new_task_id
    from tracemind.queue.protocol import Failure
    from tracemind.queue.records import dead_entry, new_record

    snapshot = load_flow(flow_path).to_dict()
    stores = open_stores(config.DataDirs.of(*data_location().file_dirs()), durable=False)
    stores.queue.prepare()
    dlq = stores.queue.dlq
    failure = Failure("RuntimeError: fail step", "Traceback (most recent call last): ...")
    for i in range(count):
        now_s = time.time()
        task_id = new_task_id(now_s)
        record = new_record(
            task_id=task_id, flow=snapshot, inputs={"i": i}, max_attempts=3, enqueued_at=now_s
        )
        dlq.put(task_id, dead_entry(record, 3, "0badc0de", failure, now_s))
    print(json.dumps({"seconds": time.perf_counter() - started, "entries": count}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
