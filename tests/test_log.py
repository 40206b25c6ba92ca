"""The JSON-lines log (tracemind.log): one object a line, on disk as soon as it is logged, and a
value JSON cannot hold written as structlog writes it (its ``__structlog__()``, else its repr)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import structlog

from tracemind import log


class _Shown:
    def __structlog__(self) -> str:
        return "shown its own way"


@pytest.fixture
def log_file(tmp_path: Path) -> Iterator[log.LogFile]:
    sink = log.LogFile(tmp_path / "logs" / "tm.log")
    log.configure(sink)
    yield sink
    structlog.reset_defaults()
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.get_name() == "tracemind"]:
        root.removeHandler(handler)


def _lines(sink: log.LogFile) -> list[dict[str, object]]:
    return [json.loads(line) for line in sink.path.read_text().splitlines()]


def test_each_event_is_one_json_line_on_disk_once_logged(log_file: log.LogFile) -> None:
    logger = log.get_logger("tracemind.test")

    logger.info("task started", task_id="t1", attempt=1)
    [line] = _lines(log_file)  # no flush: the line is in the file already

    assert line["event"] == "task started" and line["logger"] == "tracemind.test"
    assert (line["task_id"], line["attempt"], line["level"]) == ("t1", 1, "info")
    assert str(line["timestamp"]).endswith("Z")


def test_a_value_json_cannot_hold_is_written_as_structlog_writes_it(
    log_file: log.LogFile,
) -> None:
    log.get_logger("tracemind.test").info("odd values", path=Path("/x"), shown=_Shown())

    [line] = _lines(log_file)

    assert line["path"] == repr(Path("/x"))
    assert line["shown"] == "shown its own way"


def test_a_standard_library_record_shares_the_format_and_the_context(
    log_file: log.LogFile,
) -> None:
    tokens = structlog.contextvars.bind_contextvars(task_id="t2")
    try:
        logging.getLogger("a.step").warning("from a step: %s", "hello")
    finally:
        structlog.contextvars.reset_contextvars(**tokens)

    [line] = _lines(log_file)

    assert line["event"] == "from a step: hello" and line["logger"] == "a.step"
    assert line["level"] == "warning" and line["task_id"] == "t2"


def test_a_reopened_file_gets_the_lines_logged_after(log_file: log.LogFile) -> None:
    logger = log.get_logger("tracemind.test")
    logger.info("before")
    rotated = log_file.path.with_name("tm.log.1")
    log_file.path.rename(rotated)

    log_file.reopen()
    logger.info("after")

    assert [e["event"] for e in _lines(log_file)] == ["after"]
    assert [json.loads(line)["event"] for line in rotated.read_text().splitlines()] == ["before"]


def test_a_stamp_is_the_utc_time_to_the_microsecond_across_second_boundaries() -> None:
    # Given a clock read three times: twice within one second, then just past the next
    base_ns = 1_796_560_685 * 1_000_000_000  # a whole second
    instants_ns = (base_ns + 5_000, base_ns + 999_999_000, base_ns + 1_000_000_000 + 7_000)
    readings = iter(instants_ns)
    stamp = log.UtcStamper(clock_ns=lambda: next(readings))

    stamps = [str(stamp(None, "info", {})["timestamp"]) for _ in range(3)]

    # Then each is that instant in ISO-8601 UTC, six digits of microseconds, ending in Z
    expected = [
        datetime.fromtimestamp(ns // 10**9, tz=UTC)
        .replace(microsecond=ns // 1000 % 10**6)
        .strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        for ns in instants_ns
    ]
    assert stamps == expected
    assert stamps[1].endswith(".999999Z") and stamps[2].endswith(".000007Z")
