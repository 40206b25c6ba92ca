"""What a Redis crash loses, measured: redis-server SIGKILLed and restarted while a producer
enqueues and a consumer acks (real processes, see ``redis_agents.py``), under each persistence
setting. ``appendfsync always`` must lose nothing acknowledged; ``everysec`` and RDB-only may lose
only what was acknowledged within their window before the crash. The figures are printed (run
with ``-s``) and, when ``TM_REDIS_LOSS_REPORT`` names a file, appended to it as JSON lines (the
table in docs/queue-format.md comes from them).
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from test_redis_processes import AGENT_TIMEOUT_S, agent, lines

from redis_server import RedisServer
from tm_testing import Processes, wait_until
from tracemind.backend import open_backend
from tracemind.queue.protocol import TaskStatus

LOAD_BEFORE_KILL = 400
"""Enqueues acknowledged before the server is killed."""
LOAD_AFTER_RESTART = 200
DOWN_S = 0.5
WINDOW_S = {"always": 0.0, "everysec": 2.0, "rdb": 3.0}
"""How long before the crash an acknowledged write may have been made and still be lost:
nothing under ``always``; about a second of fsync lag under ``everysec`` (only on a host crash:
the write(2) precedes the reply); under RDB, everything since the last snapshot (every 1 s here,
plus the time a snapshot takes)."""


@pytest.mark.slow
@pytest.mark.parametrize("persistence", ["always", "everysec", "rdb"])
def test_a_server_crash_mid_load_loses_nothing_acknowledged_beyond_its_persistence_window(
    persistence: str, processes: Processes, tmp_path: Path
) -> None:
    # Given a producer and a consumer at work on a server with this persistence setting
    server = RedisServer(tmp_path / "redis", persistence=persistence, rdb_every_s=1).start()
    try:
        figures = _crash_under_load(server, processes, tmp_path)
    finally:
        server.stop()
    print(json.dumps(figures))
    report = os.environ.get("TM_REDIS_LOSS_REPORT")
    if report:
        with open(report, "a") as out:
            out.write(json.dumps(figures) + "\n")
    # Then nothing acknowledged is lost under "always"; under the others, only what was
    # acknowledged within the setting's window before the crash; every task left succeeded
    assert figures["acked_enqueues"] >= LOAD_BEFORE_KILL + LOAD_AFTER_RESTART
    if persistence == "always":
        assert (figures["lost_enqueues"], figures["lost_acks"]) == (0, 0)
    assert figures["oldest_loss_before_crash_s"] <= WINDOW_S[persistence]
    assert figures["unfinished"] == 0


def _crash_under_load(server: RedisServer, processes: Processes, tmp_path: Path) -> dict[str, Any]:
    """Load, SIGKILL and restart ``server``, drain, and count what acknowledged work was lost."""
    produced, consumed = tmp_path / "produce.log", tmp_path / "consume.log"
    stop_producing, stop_consuming = tmp_path / "stop-producing", tmp_path / "stop-consuming"
    location = server.url
    agent(processes, "produce", location, str(produced), "--stop", str(stop_producing))
    consumer = agent(processes, "consume", location, str(consumed), "--stop", str(stop_consuming))

    def enqueued() -> list[list[str]]:
        return [row for row in lines(produced) if row[0] == "enqueued"]

    wait_until(lambda: len(enqueued()) >= LOAD_BEFORE_KILL, AGENT_TIMEOUT_S, "load")
    # When the server is SIGKILLed and started again on the same data
    killed_at = time.time()
    server.kill()
    time.sleep(DOWN_S)
    server.restart()
    before = len(enqueued())
    wait_until(lambda: len(enqueued()) >= before + LOAD_AFTER_RESTART, AGENT_TIMEOUT_S, "reload")
    stop_producing.touch()
    backend = open_backend(location, durable=True, env={})

    def drained() -> bool:
        stats = backend.queue.stats()
        return stats.pending + stats.delayed + stats.inflight == 0

    wait_until(drained, AGENT_TIMEOUT_S, "the queue drained")  # (leases lost in the crash lapse)
    stop_consuming.touch()
    assert consumer.wait(timeout=AGENT_TIMEOUT_S) == 0
    # Which acknowledged enqueues are gone, which acknowledged tasks ran again
    acked_enqueues = {row[1]: float(row[2]) for row in enqueued()}
    lost_enqueues = {t: at for t, at in acked_enqueues.items() if backend.queue.find(t) is None}
    events = lines(consumed)
    acked_at: dict[str, float] = {}
    lost_acks: dict[str, float] = {}
    for row in events:
        if row[0] == "acked":
            acked_at.setdefault(row[1], float(row[2]))
        elif row[0] == "start" and row[1] in acked_at:
            lost_acks[row[1]] = acked_at[row[1]]  # it ran again after its ack returned
    runs = Counter(row[1] for row in events if row[0] == "start")
    figures: dict[str, Any] = {
        "persistence": server.persistence,
        "acked_enqueues": len(acked_enqueues),
        "lost_enqueues": len(lost_enqueues),
        "acked_acks": len(acked_at),
        "lost_acks": len(lost_acks),
        "ran_twice": sum(1 for n in runs.values() if n > 1),
        "oldest_loss_before_crash_s": round(
            max(
                (killed_at - at for at in [*lost_enqueues.values(), *lost_acks.values()]), default=0
            ),
            3,
        ),
    }
    unfinished = [
        t
        for t in acked_enqueues.keys() - lost_enqueues.keys()
        if getattr(backend.queue.find(t), "status", None) is not TaskStatus.SUCCEEDED
    ]
    figures["unfinished"] = len(unfinished)
    return figures
