"""The dashboard's data, without a browser: the per-minute outcome counts and recent failures a
pool keeps in memory, the status document's ``activity``, and what /dashboard.json must never
show (task inputs, passwords)."""

from __future__ import annotations

from pathlib import Path

from tracemind.backend import open_backend
from tracemind.backend.location import Location
from tracemind.config import DataDirs
from tracemind.daemon.state import StateDir
from tracemind.daemon.status_doc import status_document
from tracemind.worker.activity import (
    ERROR_LINE_MAX_CHARS,
    RECENT_FAILURES,
    WINDOW_MINUTES,
    Activity,
    empty_activity,
    error_line,
)

T0_S = 1_800_000_000.0  # a whole minute (epoch seconds): 30_000_000 * 60


def test_counts_per_minute_cover_the_last_hour_and_forget_older_minutes() -> None:
    # Given outcomes spread over two hours
    activity = Activity(since_s=T0_S)
    for minute in range(120):
        activity.record("succeeded", T0_S + minute * 60 + 5, task_id=None, flow_id="f", attempt=1)
    activity.record("retrying", T0_S + 119 * 60 + 30, task_id="a" * 22, flow_id="f", attempt=1)
    activity.record("cancelled", T0_S + 119 * 60 + 31, task_id="b" * 22, flow_id="f", attempt=1)

    # When the last hour is read at the end of minute 119
    doc = activity.to_dict(T0_S + 119 * 60 + 59)

    # Then it has one slot per minute of the last hour, the current minute last
    assert len(doc["minutes"]) == len(doc["succeeded"]) == len(doc["failed"]) == WINDOW_MINUTES
    assert doc["minutes"][-1] == "2027-01-15T09:59:00.000Z"
    assert doc["minutes"][0] == "2027-01-15T09:00:00.000Z"
    assert doc["succeeded"] == [1] * WINDOW_MINUTES
    # And a failed attempt counts as failed; a cancelled one as neither
    assert doc["failed"] == [0] * (WINDOW_MINUTES - 1) + [1]
    # And minutes older than the window are not kept in memory either
    assert len(activity._minutes) <= WINDOW_MINUTES

    # When read ten minutes later, the newest ten slots are empty
    later = activity.to_dict(T0_S + 129 * 60)
    assert later["succeeded"][-10:] == [0] * 10 and later["succeeded"][:50] == [1] * 50


def test_recent_failures_are_the_last_fifty_newest_first_with_the_first_error_line_cut() -> None:
    # Given more failures than are kept, the last one with a long, multi-line error
    activity = Activity(since_s=T0_S)
    for n in range(RECENT_FAILURES + 5):
        activity.record(
            "dead-lettered" if n % 2 else "retrying",
            T0_S + n,
            task_id=f"{n:022x}",
            flow_id="flow",
            attempt=n % 3 + 1,
            error=f"RuntimeError: failure {n}\nTraceback line that must not show",
        )
    long_error = "\n  \nValueError: " + "x" * 500 + "\nsecond line"
    activity.record(
        "worker-died", T0_S + 99, task_id="f" * 22, flow_id=None, attempt=2, error=long_error
    )
    activity.record("succeeded", T0_S + 100, task_id="e" * 22, flow_id=None, attempt=1)

    # When they are read
    failures = activity.to_dict(T0_S + 100)["recent_failures"]

    # Then only the last fifty failures are there, newest first, successes never
    assert len(failures) == RECENT_FAILURES
    assert failures[0]["task_id"] == "f" * 22 and failures[0]["outcome"] == "worker-died"
    assert failures[1]["task_id"] == f"{RECENT_FAILURES + 4:022x}"
    assert failures[-1]["task_id"] == f"{6:022x}"
    # And each error is its first non-blank line, at most 200 characters
    assert failures[1]["error"] == f"RuntimeError: failure {RECENT_FAILURES + 4}"
    assert len(failures[0]["error"]) == ERROR_LINE_MAX_CHARS == 200
    assert failures[0]["error"].startswith("ValueError: xxx") and failures[0]["error"].endswith("…")
    assert set(failures[1]) == {"task_id", "flow_id", "attempt", "outcome", "at", "error"}
    assert failures[1]["at"] == "2027-01-15T08:00:54.000Z"


def test_error_line_edge_cases() -> None:
    assert error_line(None) is None and error_line("") is None and error_line(" \n ") is None
    assert error_line("one\ntwo") == "one"
    assert error_line("y" * 200) == "y" * 200
    assert error_line("y" * 201) == "y" * 199 + "…"


def test_status_document_has_an_empty_activity_when_no_daemon_runs(tmp_path: Path) -> None:
    # Given a state dir no daemon ever used
    dirs = DataDirs(tmp_path / "queue", tmp_path / "idempotency", tmp_path / "dlq")
    location = Location.for_file_dirs(str(dirs.queue), str(dirs.idempotency), str(dirs.dlq))
    backend = open_backend(location, durable=False)

    # When the status document is built
    doc = status_document(StateDir(tmp_path / "state"), backend)

    # Then it has the activity keys, empty, saying there is no start time
    assert doc["activity"] == empty_activity()
    assert doc["activity"]["since"] is None


def test_a_password_in_the_backend_location_is_redacted() -> None:
    assert (
        Location.parse("redis://user:s3cret@db.example:6379/0").redacted()
        == "redis://user:***@db.example:6379/0"
    )
    assert Location.parse("redis://:s3cret@[::1]:6379").redacted() == "redis://:***@[::1]:6379"
    assert Location.parse("file:///srv/tm").redacted() == "file:///srv/tm"
    assert Location.parse("redis://db.example:6379").redacted() == "redis://db.example:6379"
