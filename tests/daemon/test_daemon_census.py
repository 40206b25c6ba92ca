"""The daemon's enqueued counter: counting waiting tasks lists pending/, which a deep backlog
makes expensive, so the count is taken only while it stays within its share of the
supervisor's time; the counter never goes back."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

from tracemind.backend.location import Location
from tracemind.daemon.service import CENSUS_BUDGET, Daemon
from tracemind.daemon.settings import DaemonSettings
from tracemind.worker.pool import Outcomes
from tracemind.worker.settings import PoolSettings, WorkerSettings


class SlowQueue:
    """A queue whose census of waiting tasks takes ``cost_s`` and reports ``waiting``."""

    def __init__(self, cost_s: float, waiting: int) -> None:
        self.cost_s = cost_s
        self.waiting = waiting
        self.censuses = 0

    def waiting_since(self, epoch_s: float) -> int:
        self.censuses += 1
        time.sleep(self.cost_s)
        return self.waiting


def _daemon(tmp_path: Path, queue: SlowQueue) -> Daemon:
    worker = WorkerSettings(Location.for_root(str(tmp_path)), False, "x:y", 30.0, None)
    settings = DaemonSettings(PoolSettings(2, "0123456789ab", worker), tmp_path / "state", 8.0)
    daemon = Daemon(settings)
    daemon.backend = queue  # type: ignore[assignment]
    daemon.pool = SimpleNamespace(outcomes=Outcomes())  # type: ignore[assignment]
    return daemon


def test_a_cheap_census_runs_with_every_heartbeat(tmp_path: Path) -> None:
    queue = SlowQueue(cost_s=0.0, waiting=5)
    daemon = _daemon(tmp_path, queue)

    totals = []
    for _ in range(5):  # heartbeats, closer together than in a daemon (1 s)
        totals.append(daemon._count_enqueued())
        time.sleep(0.1)

    assert queue.censuses == 5 and totals == [5] * 5


def test_an_expensive_census_keeps_to_its_budget_and_the_counter_never_goes_back(
    tmp_path: Path,
) -> None:
    # Given a census that takes 20 ms (a deep backlog), so one per 20 / CENSUS_BUDGET ms
    queue = SlowQueue(cost_s=0.02, waiting=1000)
    daemon = _daemon(tmp_path, queue)
    assert daemon._count_enqueued() == 1000
    # When heartbeats come faster than that, and workers take up tasks meanwhile
    queue.waiting = 990
    daemon.pool.outcomes.counts["first_attempts"] = 10
    started_s = time.monotonic()
    totals = [daemon._count_enqueued() for _ in range(5)]
    # Then no census ran within its budget window, and the counter held its value
    assert time.monotonic() - started_s < 0.02 / CENSUS_BUDGET
    assert queue.censuses == 1 and totals == [1000] * 5
    # And once the window has passed, the next heartbeat counts again
    time.sleep(0.02 / CENSUS_BUDGET)
    assert daemon._count_enqueued() == 1000 and queue.censuses == 2
