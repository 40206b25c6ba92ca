"""A worker's events reach its pool as JSON lines, one write each, in the order they happened."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest

from tracemind.worker.activity import ID_MAX_CHARS
from tracemind.worker.events import EventWriter
from tracemind.worker.runtime import Task


@pytest.fixture
def pipes() -> Iterator[tuple[int, int, int, int]]:
    """(events read end, events write end, wake read end, wake write end)."""
    events_read, events_write = os.pipe()
    wake_read, wake_write = os.pipe()
    yield events_read, events_write, wake_read, wake_write
    for fd in (events_read, events_write, wake_read, wake_write):
        os.close(fd)


def read_lines(fd: int) -> list[dict[str, object]]:
    os.set_blocking(fd, False)
    text = os.read(fd, 1 << 20).decode()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def test_a_tasks_events_are_json_lines_in_order(pipes: tuple[int, int, int, int]) -> None:
    events_read, events_write, wake_read, wake_write = pipes
    writer = EventWriter(events_write, wake_write)
    long_flow = "f" * (ID_MAX_CHARS + 5)

    # When a worker reports a task taken, a step begun, its outcome, then a look that found nothing
    writer.started(Task("t1", long_flow, 2, {}))
    writer.step("first")
    writer.finished("retrying", 0.25, 2, "ValueError: bad\n  more lines")
    writer.idle()

    # Then the pool reads each event as one JSON object, in that order
    started, step, finished, idle = read_lines(events_read)
    assert started == {
        "event": "started",
        "attempt": 2,
        "task_id": "t1",
        "flow_id": "f" * ID_MAX_CHARS,
    }
    assert step == {"event": "step", "step": "first"}
    assert finished == {
        "outcome": "retrying",
        "duration_s": 0.25,
        "attempt": 2,
        "flow_id": long_flow,
        "task_id": "t1",
        "error": "ValueError: bad",
    }
    assert idle == {"event": "idle"}
    # And idle woke the pool's supervisor
    assert os.read(wake_read, 16) == b"i"


def test_a_non_ascii_id_arrives_escaped_and_whole(
    pipes: tuple[int, int, int, int],
) -> None:
    events_read, events_write, _, _ = pipes
    writer = EventWriter(events_write, None)
    step_id = "\u00e9" * ID_MAX_CHARS  # escaped as \\u00e9: six bytes each

    writer.step(step_id)
    writer.idle()  # no wake pipe: nothing else happens

    assert read_lines(events_read) == [{"event": "step", "step": step_id}, {"event": "idle"}]
