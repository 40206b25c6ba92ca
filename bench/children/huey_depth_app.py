"""The competitor's app for drain windows at depth: ``huey_app``'s SqliteHuey and no-op task, plus
signal handlers that note when the consumer's forked workers complete the Nth task.

``BENCH_HUEY_MARKS`` lists completion counts (``1000,21000,41000``); when the count reaches each
mark, the worker that completed it appends ``<mark> <epoch seconds>`` to ``BENCH_HUEY_REPORT``,
and at the last mark it asks the consumer to stop (SIGINT, graceful). Counting happens in memory
shared by the workers: nothing polls the database from outside.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from typing import Any

from huey.signals import SIGNAL_COMPLETE
from huey_app import huey, noop

__all__ = ["huey", "noop"]

_MARKS = [int(m) for m in os.environ["BENCH_HUEY_MARKS"].split(",")]
_REPORT = os.environ["BENCH_HUEY_REPORT"]
_completed = multiprocessing.Value("q", 0)


@huey.signal(SIGNAL_COMPLETE)
def _on_complete(name: str, task: Any, *args: Any, **kwargs: Any) -> None:
    with _completed.get_lock():
        _completed.value += 1
        count = _completed.value
    if count in _MARKS:
        with open(_REPORT, "a") as report:
            report.write(f"{count} {time.time()!r}\n")
        if count == _MARKS[-1]:
            os.kill(os.getppid(), signal.SIGINT)
