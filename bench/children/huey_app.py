"""The competitor's app: a SqliteHuey with default (durable) settings and one no-op task.

The SQLite file comes from ``BENCH_HUEY_DB``. When ``BENCH_HUEY_TARGET`` is set (the drain
benchmark), signal handlers count completions in memory shared by the consumer's forked workers;
the worker that completes the last task writes the first-claim and last-completion wall times to
``BENCH_HUEY_REPORT`` and asks the consumer to stop gracefully (SIGINT). So completion is
detected inside the consumer — nothing polls the database from outside.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from typing import Any

from huey import SqliteHuey
from huey.signals import SIGNAL_COMPLETE, SIGNAL_EXECUTING

huey = SqliteHuey("bench", filename=os.environ["BENCH_HUEY_DB"])


@huey.task()
def noop(i: int) -> None:
    return None


_TARGET = int(os.environ.get("BENCH_HUEY_TARGET", "0"))

if _TARGET:
    _completed = multiprocessing.Value("q", 0)
    _first_claim_s = multiprocessing.Value("d", 0.0)

    @huey.signal(SIGNAL_EXECUTING)
    def _on_executing(name: str, task: Any, *args: Any, **kwargs: Any) -> None:
        if _first_claim_s.value == 0.0:
            with _first_claim_s.get_lock():
                if _first_claim_s.value == 0.0:
                    _first_claim_s.value = time.time()

    @huey.signal(SIGNAL_COMPLETE)
    def _on_complete(name: str, task: Any, *args: Any, **kwargs: Any) -> None:
        with _completed.get_lock():
            _completed.value += 1
            count = _completed.value
        if count == _TARGET:
            report = {"first_claim_s": _first_claim_s.value, "last_done_s": time.time()}
            with open(os.environ["BENCH_HUEY_REPORT"], "w") as handle:
                json.dump(report, handle)
            os.kill(os.getppid(), signal.SIGINT)
