"""In-process claim + ack of no-op tasks: ``queue.lease`` then ``queue.ack``, until empty, then
``queue.flush`` (the acks are committed in groups; the time includes the last commit).

Usage: python ours_claim_ack.py FLOW N — seeds N tasks as one batch (untimed), then times the
loop. Durable (TM_FILE_QUEUE_V2) unless the environment turns it off.
"""

from __future__ import annotations

import json
import sys
import time


def main() -> int:
    flow_path, count = sys.argv[1], int(sys.argv[2])
    from tracemind import config
    from tracemind.backend.file.stores import open_stores
    from tracemind.backend.location import data_location
    from tracemind.flows import load_flow
    from tracemind.submit import Submission

    stores = open_stores(config.DataDirs.of(*data_location().file_dirs()), durable=config.durable())
    submitter = stores.submitter(config.idempotency_ttl_s())
    submitter.submit_many(load_flow(flow_path), [Submission({"i": i}) for i in range(count)])
    queue = stores.queue
    claimed = 0
    started = time.perf_counter()
    while (lease := queue.lease("bench-0", 30.0)) is not None:
        queue.ack(lease, {})
        claimed += 1
    queue.flush()  # every ack durable (and reported succeeded) before the clock stops
    loop_s = time.perf_counter() - started
    if claimed != count:
        raise SystemExit(f"ours_claim_ack: claimed {claimed} of {count}")
    print(json.dumps({"durable": config.durable(), "loop_s": loop_s, "rate": count / loop_s}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
