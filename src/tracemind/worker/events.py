"""What a worker tells its pool: one JSON object a line on the events pipe.

Lines, in the order a worker writes them:

- ``{"event": "started", "attempt", "task_id", "flow_id"}`` when a task is taken, before it runs;
- ``{"event": "step", "step"}`` as each step of its flow begins;
- ``{"outcome", "duration_s", "attempt", "flow_id", "task_id", "error"}`` once its outcome is
  recorded (``error``: the first line of a failure's message, else null);
- ``{"event": "idle"}`` when a look found nothing to do after a task (its acks committed
  first), followed by one byte on the wake pipe so that the pool's supervisor wakes for it.

Each line is written with one ``write(2)`` on the pipe as the event happens (never held in a
buffer), so a worker that dies loses no event it reported. Lines never carry a task's input or
result; the ids in ``started`` and ``step`` lines are cut at
:data:`~tracemind.worker.activity.ID_MAX_CHARS` characters.
"""

from __future__ import annotations

import contextlib
import json
import os

from tracemind.encoders import reusing_encoder
from tracemind.worker.activity import error_line, short_id
from tracemind.worker.runtime import Task

_IDLE_LINE = b'{"event": "idle"}\n'
_encode_event = reusing_encoder(json.JSONEncoder(check_circular=False))


class EventWriter:
    """Writes a worker's events to ``events_fd`` (a blocking pipe) and wakes its pool through
    ``wake_fd`` on ``idle``. Remembers the task it reported started, for its outcome line."""

    def __init__(self, events_fd: int, wake_fd: int | None) -> None:
        self.events_fd = events_fd
        self.wake_fd = wake_fd
        self._task_id: str | None = None
        self._flow_id: str | None = None

    def started(self, task: Task) -> None:
        self._task_id, self._flow_id = task.task_id, task.flow_id
        event = {
            "event": "started",
            "attempt": task.attempt,
            "task_id": task.task_id,
            "flow_id": short_id(task.flow_id),
        }
        self._write(event)

    def step(self, step_id: str) -> None:
        # The most frequent line (one per step of every task): put together around the one
        # value it carries, which is all json.dumps has to encode.
        self._write_line(
            b'{"event": "step", "step": %b}\n' % json.dumps(short_id(step_id)).encode()
        )

    def finished(self, outcome: str, duration_s: float, attempt: int, error: str | None) -> None:
        event = {
            "outcome": outcome,
            "duration_s": duration_s,
            "attempt": attempt,
            "flow_id": self._flow_id,
            "task_id": self._task_id,
            "error": error_line(error),
        }
        self._write(event)

    def idle(self) -> None:
        self._write_line(_IDLE_LINE)
        if self.wake_fd is not None:
            with contextlib.suppress(OSError):  # full (a wake-up is pending anyway) or closed
                os.write(self.wake_fd, b"i")

    def _write(self, event: dict[str, object]) -> None:
        self._write_line(_encode_event(event).encode() + b"\n")

    def _write_line(self, line: bytes) -> None:
        # A line longer than the pipe's atomic size may go out in parts: write the rest.
        written = os.write(self.events_fd, line)
        while written < len(line):
            written += os.write(self.events_fd, line[written:])
