"""Guarantee 12 for the file backend on a directory its reader cannot write: every reader verb
answers, as another user, and nothing under the data root changes."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from backend_testing import LEASE_S, RAW_STATES, process_command, process_env
from tm_testing import NOBODY, FakeClock, make_task
from tracemind.backend import Location, open_backend
from tracemind.backend.registration import registration
from tracemind.queue.protocol import Failure


def test_readers_answer_on_a_data_root_they_cannot_write(
    shared_tmp: Path, nobody_works: bool
) -> None:
    if not nobody_works:
        pytest.skip("tm cannot run as uid 65534 here")
    clock = FakeClock(time.time())  # (the reader runs on the real clock)
    # Given a data root owned by root, with a task in several states and a registration
    backend = open_backend(
        Location.for_root(str(shared_tmp / "data")), durable=False, clock=clock, env={}
    )
    tasks = [make_task(clock, max_attempts=1, due_in_s=-3 + n) for n in range(3)]
    backend.queue.enqueue(tasks)
    dead = backend.queue.lease("c1", LEASE_S)
    assert dead is not None
    backend.queue.dead_letter(dead, Failure("boom"))
    assert backend.queue.lease("c1", LEASE_S) is not None
    backend.registry.register(
        registration(
            "d-one", kind="pool", state_dir=None, started_s=clock(), workers={}, draining=False
        )
    )
    for path in [shared_tmp / "data", *(shared_tmp / "data").rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    before = RAW_STATES["file"](backend)
    # When another user calls every reader verb (the registration is fresh by its clock too)
    proc = subprocess.run(
        [*NOBODY, *process_command("read", backend.location, *(t.task_id for t in tasks))],
        env=process_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # Then each answers, and nothing changed
    assert proc.returncode == 0, proc.stderr
    answers = json.loads(proc.stdout)
    assert answers["found"] == ["dead", "inflight", "pending"]
    assert (answers["stats"]["pending"], answers["stats"]["inflight"], answers["dead"]) == (1, 1, 1)
    assert answers["dead_letters"] == [dead.task_id] and answers["dead_count"] == 1
    assert answers["live"] == ["d-one"] and answers["has_waiting"] is True
    assert answers["problems"] and all("not writable" in line for line in answers["problems"])
    assert RAW_STATES["file"](backend) == before
    assert os.stat(shared_tmp / "data").st_uid == 0
