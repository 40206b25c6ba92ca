"""Cron parsing and fire times, computed from explicit instants (no clock, no sleeping)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import pytest

from tracemind.triggers.cron import CronError, CronSchedule, EverySchedule, parse_schedule


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def fires(expression: str, timezone: str, after: datetime, count: int) -> list[datetime]:
    schedule = parse_schedule(expression, timezone)
    times = []
    for _ in range(count):
        after = schedule.next_fire(after)
        times.append(after)
    return times


@pytest.mark.parametrize(
    ("expression", "fragment"),
    [
        ("every monday", "expected 5 fields"),
        ("* * * *", "expected 5 fields"),
        ("* * * * * *", "expected 5 fields"),
        ("60 * * * *", "minute: 60 is out of range 0-59"),
        ("* 24 * * *", "hour: 24 is out of range 0-23"),
        ("* * 0 * *", "day-of-month: 0 is out of range 1-31"),
        ("* * * 13 *", "month: 13 is out of range 1-12"),
        ("*/0 * * * *", "minute: invalid step"),
        ("5-1 * * * *", "runs backwards"),
        ("* * * * funday", "day-of-week: 'funday' is not a number or a name"),
        ("0 0 30 2 *", "never occurs"),
        ("@reboot", "unknown schedule"),
        ("@every 0s", "at least 1s"),
        ("@every 10", "expected @every N{s,m,h}"),
        ("@every 1.5s", "expected @every N{s,m,h}"),
        ("", "expected 5 fields"),
    ],
)
def test_invalid_expressions_raise_one_line(expression: str, fragment: str) -> None:
    with pytest.raises(CronError) as caught:
        parse_schedule(expression)
    assert fragment in str(caught.value)
    assert "\n" not in str(caught.value)


def test_unknown_timezone_is_rejected() -> None:
    with pytest.raises(CronError, match="unknown timezone 'Mars/Olympus'"):
        parse_schedule("0 * * * *", "Mars/Olympus")


def test_basic_fields_lists_ranges_and_steps() -> None:
    after = utc(2024, 1, 1, 0, 0)  # a Monday
    assert fires("*/15 9-10 * * *", "UTC", after, 3) == [
        utc(2024, 1, 1, 9, 0),
        utc(2024, 1, 1, 9, 15),
        utc(2024, 1, 1, 9, 30),
    ]
    assert fires("5,35 */12 * * *", "UTC", after, 4) == [
        utc(2024, 1, 1, 0, 5),
        utc(2024, 1, 1, 0, 35),
        utc(2024, 1, 1, 12, 5),
        utc(2024, 1, 1, 12, 35),
    ]
    # "10/20" means 10, 30, 50 (from 10 to the end of the range)
    assert fires("10/20 0 * * *", "UTC", after, 3) == [
        utc(2024, 1, 1, 0, 10),
        utc(2024, 1, 1, 0, 30),
        utc(2024, 1, 1, 0, 50),
    ]


def test_next_fire_is_strictly_after() -> None:
    schedule = parse_schedule("0 * * * *")
    assert schedule.next_fire(utc(2024, 1, 1, 5, 0)) == utc(2024, 1, 1, 6, 0)
    assert schedule.next_fire(utc(2024, 1, 1, 4, 59, 59)) == utc(2024, 1, 1, 5, 0)


def test_names_and_sunday_as_seven() -> None:
    after = utc(2024, 1, 1)  # Monday
    assert fires("0 12 * jan-feb fri", "UTC", after, 1) == [utc(2024, 1, 5, 12)]
    assert fires("0 0 * * 7", "UTC", after, 1) == [utc(2024, 1, 7)]
    assert fires("0 0 * * SUN", "UTC", after, 1) == [utc(2024, 1, 7)]
    assert fires("0 0 1 MAR *", "UTC", after, 1) == [utc(2024, 3, 1)]


@pytest.mark.parametrize(
    ("macro", "expected"),
    [
        ("@yearly", utc(2025, 1, 1)),
        ("@annually", utc(2025, 1, 1)),
        ("@monthly", utc(2024, 2, 1)),
        ("@weekly", utc(2024, 1, 7)),  # Sunday midnight
        ("@daily", utc(2024, 1, 2)),
        ("@midnight", utc(2024, 1, 2)),
        ("@hourly", utc(2024, 1, 1, 1)),
    ],
)
def test_macros(macro: str, expected: datetime) -> None:
    assert parse_schedule(macro).next_fire(utc(2024, 1, 1)) == expected


def test_day_of_month_or_day_of_week_when_both_are_restricted() -> None:
    # 2024-01: the 13th is a Saturday; Fridays are the 5th, 12th, 19th.
    after = utc(2024, 1, 1)
    assert fires("0 0 13 * fri", "UTC", after, 4) == [
        utc(2024, 1, 5),
        utc(2024, 1, 12),
        utc(2024, 1, 13),
        utc(2024, 1, 19),
    ]
    # Only one of them restricted: it alone decides.
    assert fires("0 0 13 * *", "UTC", after, 2) == [utc(2024, 1, 13), utc(2024, 2, 13)]
    # As in Vixie cron, a field starting with "*" counts as unrestricted, so "*/10" (days 1, 11,
    # 21, 31) and Monday must *both* hold: 2024-03-11 and 2024-04-01 are the next such days.
    assert fires("0 0 */10 * mon", "UTC", after, 2) == [utc(2024, 3, 11), utc(2024, 4, 1)]


def test_leap_day_is_found_years_ahead() -> None:
    assert fires("0 0 29 2 *", "UTC", utc(2097, 1, 1), 1) == [utc(2104, 2, 29)]


def test_timezone_shifts_the_schedule() -> None:
    # 09:00 in Berlin is 08:00Z in winter and 07:00Z in summer.
    assert fires("0 9 * * *", "Europe/Berlin", utc(2024, 1, 10), 1) == [utc(2024, 1, 10, 8)]
    assert fires("0 9 * * *", "Europe/Berlin", utc(2024, 7, 10), 1) == [utc(2024, 7, 10, 7)]
    assert fires("0 9 * * *", "America/New_York", utc(2024, 1, 10), 1) == [utc(2024, 1, 10, 14)]


def test_skipped_local_time_fires_once_right_after_the_gap_berlin() -> None:
    # 2024-03-31: Berlin clocks jump 02:00 CET -> 03:00 CEST at 01:00Z; 02:30 does not exist.
    times = fires("30 2 * * *", "Europe/Berlin", utc(2024, 3, 30, 12), 3)
    assert times == [utc(2024, 3, 31, 1, 0), utc(2024, 4, 1, 0, 30), utc(2024, 4, 2, 0, 30)]


def test_skipped_local_times_collapse_into_one_fire_new_york() -> None:
    # 2024-03-10: New York jumps 02:00 EST -> 03:00 EDT at 07:00Z. 02:00, 02:30 and 03:00 all
    # map to 07:00Z, which fires once.
    times = fires("*/30 * * * *", "America/New_York", utc(2024, 3, 10, 6, 0), 4)
    assert times == [
        utc(2024, 3, 10, 6, 30),  # 01:30 EST
        utc(2024, 3, 10, 7, 0),  # 03:00 EDT (02:00 and 02:30 skipped, fired here once)
        utc(2024, 3, 10, 7, 30),  # 03:30 EDT
        utc(2024, 3, 10, 8, 0),
    ]


def test_repeated_local_time_fires_once_at_its_first_occurrence_berlin() -> None:
    # 2024-10-27: Berlin goes 03:00 CEST -> 02:00 CET at 01:00Z; 02:30 happens at 00:30Z and 01:30Z.
    times = fires("30 2 * * *", "Europe/Berlin", utc(2024, 10, 26, 12), 2)
    assert times == [utc(2024, 10, 27, 0, 30), utc(2024, 10, 28, 1, 30)]
    # Asking from inside the repeated hour does not fire the second occurrence.
    schedule = parse_schedule("30 2 * * *", "Europe/Berlin")
    assert schedule.next_fire(utc(2024, 10, 27, 1, 10)) == utc(2024, 10, 28, 1, 30)


def test_repeated_hour_new_york() -> None:
    # 2024-11-03: New York goes 02:00 EDT -> 01:00 EST at 06:00Z; 01:15 happens twice.
    times = fires("15 1 * * *", "America/New_York", utc(2024, 11, 3, 0), 2)
    assert times == [utc(2024, 11, 3, 5, 15), utc(2024, 11, 4, 6, 15)]


def test_prev_fire_is_at_or_before_and_respects_dst() -> None:
    schedule = parse_schedule("30 2 * * *", "Europe/Berlin")
    assert schedule.prev_fire(utc(2024, 3, 31, 1, 0)) == utc(2024, 3, 31, 1, 0)
    assert schedule.prev_fire(utc(2024, 3, 31, 0, 59)) == utc(2024, 3, 30, 1, 30)
    assert schedule.prev_fire(utc(2024, 10, 27, 1, 40)) == utc(2024, 10, 27, 0, 30)


def test_every_fires_on_an_epoch_aligned_grid_with_exact_spacing() -> None:
    schedule = parse_schedule("@every 30s")
    assert isinstance(schedule, EverySchedule)
    start = utc(2024, 1, 1, 0, 0, 10)
    times = fires("@every 30s", "UTC", start, 4)
    assert times == [
        utc(2024, 1, 1, 0, 0, 30),
        utc(2024, 1, 1, 0, 1, 0),
        utc(2024, 1, 1, 0, 1, 30),
        utc(2024, 1, 1, 0, 2, 0),
    ]
    # every gap is exactly N seconds (the reference fired every N+1)
    assert {(b - a).total_seconds() for a, b in itertools.pairwise(times)} == {30.0}


def test_every_one_second_from_a_fractional_start() -> None:
    start = datetime(2024, 1, 1, 0, 0, 0, 250_000, tzinfo=UTC)
    times = fires("@every 1s", "UTC", start, 3)
    assert times == [utc(2024, 1, 1, 0, 0, 1), utc(2024, 1, 1, 0, 0, 2), utc(2024, 1, 1, 0, 0, 3)]


@pytest.mark.parametrize(
    ("text", "seconds"), [("@every 7s", 7), ("@every 5m", 300), ("@EVERY 2h", 7200)]
)
def test_every_units_and_grid(text: str, seconds: int) -> None:
    schedule = parse_schedule(text, "Europe/Berlin")  # the timezone does not move the grid
    fire = schedule.next_fire(utc(2024, 6, 1, 13, 37, 11))
    assert fire.timestamp() % seconds == 0
    assert 0 < (fire - utc(2024, 6, 1, 13, 37, 11)).total_seconds() <= seconds
    assert schedule.prev_fire(fire) == fire


def test_naive_datetimes_are_refused() -> None:
    schedule = parse_schedule("0 * * * *")
    assert isinstance(schedule, CronSchedule)
    with pytest.raises(ValueError, match="naive"):
        schedule.next_fire(datetime(2024, 1, 1))
    with pytest.raises(ValueError, match="naive"):
        EverySchedule(5).next_fire(datetime(2024, 1, 1))


def test_local_timezone_follows_tz(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    # 09:00 in Tokyo (UTC+9, no DST) is 00:00Z
    assert fires("0 9 * * *", "local", utc(2024, 1, 1, 1), 1) == [utc(2024, 1, 2, 0)]
