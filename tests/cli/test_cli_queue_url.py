"""``--queue-url`` / ``TM_QUEUE_URL``: one string says where the data is, on every verb."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tm_testing import FlowFiles, Tm


def test_a_file_url_is_a_data_root_for_every_verb(tm: Tm, flows: FlowFiles, tmp_path: Path) -> None:
    root = tmp_path / "elsewhere"
    url = f"file://{root}"
    flow = flows.write("echo", "tracemind.steps.echo")
    task_id = tm.json("enqueue", flow, "--queue-url", url, "--json")["task_id"]
    assert any((root / "queue" / "pending").glob(f"*/*/*_{task_id}_0.json"))
    assert tm.json("queue", "stats", "--queue-url", url, "--json")["pending"] == 1
    assert (
        tm.json("task", "show", task_id, "--json", env={"TM_QUEUE_URL": url})["status"] == "pending"
    )
    # (the default location, TM_DATA_DIR, holds nothing)
    assert tm.json("queue", "stats", "--json")["pending"] == 0
    ps = json.loads(tm("daemon", "ps", "--json", "--queue-url", url).stdout)
    assert ps["queue_url"] == url


@pytest.mark.parametrize("url", ["memcached://localhost:11211", "file://relative/path", "nothing"])
def test_an_unknown_or_malformed_location_is_one_line_and_exit_2(tm: Tm, url: str) -> None:
    flag = tm("queue", "stats", "--queue-url", url)
    assert flag.returncode == 2 and "Traceback" not in flag.stderr and url in flag.stderr
    env = tm("queue", "stats", env={"TM_QUEUE_URL": url})
    assert env.returncode == 2 and env.stderr.count("\n") == 1 and "Traceback" not in env.stderr
