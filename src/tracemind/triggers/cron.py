"""Schedules: parse cron expressions and compute fire times as pure functions of an instant.

Supported: five fields (minute hour day-of-month month day-of-week) with ``*``, ``,``, ``-``, ``/``
and the names ``jan``-``dec`` / ``sun``-``sat``; ``@yearly`` ``@annually`` ``@monthly`` ``@weekly``
``@daily`` ``@midnight`` ``@hourly``; and ``@every N{s,m,h}``.

Contract (tests depend on it):

- Cron fields are read in the schedule's timezone (an IANA name or ``local``). When both
  day-of-month and day-of-week are restricted (neither starts with ``*``), a day matches if *either*
  matches, as in Vixie cron; otherwise both must.
- Daylight saving time: a local time that occurs twice fires once, at its first occurrence; a
  local time that does not exist fires once, at the instant the gap ends. So ``30 2 * * *`` in
  Europe/Berlin fires at 01:00Z on the spring-forward day and at 00:30Z (not also 01:30Z) on the
  fall-back day.
- ``@every N`` fires at the multiples of N seconds since the Unix epoch, regardless of timezone,
  so fire times (and the idempotency keys built from them) are the same in every process.
- ``next_fire(after)`` is strictly after ``after``; ``prev_fire(at)`` is at or before ``at``.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
_DAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
_EVERY = re.compile(r"@every\s+(\d+)\s*([smh])", re.IGNORECASE)
_UNIT_S = {"s": 1, "m": 60, "h": 3600}
# The longest gap between two matching days of a satisfiable expression is Feb 29 (8 years
# around 2100); with both day fields restricted the OR rule only makes gaps shorter.
_MAX_SEARCH_DAYS = 366 * 9
_FORMS = (
    "5 fields (minute hour day-of-month month day-of-week), @hourly/@daily/..., or @every N{s,m,h}"
)


class CronError(ValueError):
    """An expression or timezone that cannot be parsed; the message is one line."""


class Schedule(Protocol):
    """Fire times as pure functions of an aware instant; results are aware UTC datetimes."""

    def next_fire(self, after: datetime) -> datetime:
        """The first fire time strictly after ``after``."""
        ...

    def prev_fire(self, at: datetime) -> datetime | None:
        """The last fire time at or before ``at`` (None if there is none within decades)."""
        ...


class EverySchedule:
    """Every ``interval_s`` seconds on a grid aligned to the Unix epoch."""

    def __init__(self, interval_s: int) -> None:
        if interval_s < 1:
            raise CronError("@every needs an interval of at least 1s")
        self.interval_s = interval_s

    def next_fire(self, after: datetime) -> datetime:
        slot = math.floor(_epoch_s(after) / self.interval_s) + 1
        return datetime.fromtimestamp(slot * self.interval_s, UTC)

    def prev_fire(self, at: datetime) -> datetime | None:
        slot = math.floor(_epoch_s(at) / self.interval_s)
        return datetime.fromtimestamp(slot * self.interval_s, UTC)


class CronSchedule:
    """A five-field cron expression evaluated in ``tz`` (see the module docstring for DST)."""

    def __init__(self, expression: str, tz: tzinfo) -> None:
        text = MACROS.get(expression.strip().lower(), expression)
        parts = text.split()
        if len(parts) != 5:
            raise CronError(f"invalid cron expression {expression!r}: expected {_FORMS}")
        minute, hour, dom, month, dow = parts
        self.expression = expression
        self.tz = tz
        self.minutes = sorted(_parse_field(minute, "minute", 0, 59, []))
        self.hours = sorted(_parse_field(hour, "hour", 0, 23, []))
        self.days = _parse_field(dom, "day-of-month", 1, 31, [])
        self.months = _parse_field(month, "month", 1, 12, _MONTHS, first=1)
        self.weekdays = {d % 7 for d in _parse_field(dow, "day-of-week", 0, 7, _DAYS)}
        self.dom_restricted = not dom.startswith("*")
        self.dow_restricted = not dow.startswith("*")
        self._times = [(h, m) for h in self.hours for m in self.minutes]
        if self.dom_restricted and not self.dow_restricted and not self._dom_possible():
            raise CronError(f"invalid cron expression {expression!r}: that day never occurs")

    def next_fire(self, after: datetime) -> datetime:
        start = _local_date(after, self.tz)
        for offset in range(_MAX_SEARCH_DAYS):
            day = start + timedelta(days=offset)
            if self.day_matches(day):
                index = self._count_at_or_before(day, after)
                if index < len(self._times):
                    return self._instant(day, index)
        raise CronError(f"{self.expression!r} does not fire within {_MAX_SEARCH_DAYS} days")

    def prev_fire(self, at: datetime) -> datetime | None:
        start = _local_date(at, self.tz)
        for offset in range(_MAX_SEARCH_DAYS):
            day = start - timedelta(days=offset)
            if self.day_matches(day):
                index = self._count_at_or_before(day, at)
                if index > 0:
                    return self._instant(day, index - 1)
        return None

    def day_matches(self, day: date) -> bool:
        """Month, and day-of-month / day-of-week with cron's OR rule when both are restricted."""
        if day.month not in self.months:
            return False
        dom_ok = day.day in self.days
        dow_ok = (day.weekday() + 1) % 7 in self.weekdays
        if self.dom_restricted and self.dow_restricted:
            return dom_ok or dow_ok
        return dom_ok and dow_ok

    def _count_at_or_before(self, day: date, moment: datetime) -> int:
        """How many of ``day``'s fire times are <= ``moment`` (they never decrease: bisect)."""
        return _first_index(len(self._times), lambda index: self._instant(day, index) > moment)

    def _instant(self, day: date, index: int) -> datetime:
        hour, minute = self._times[index]
        return resolve_wall_time(datetime(day.year, day.month, day.day, hour, minute), self.tz)

    def _dom_possible(self) -> bool:
        longest = {2: 29, 4: 30, 6: 30, 9: 30, 11: 30}
        return any(d <= longest.get(m, 31) for m in self.months for d in self.days)


def resolve_wall_time(wall: datetime, tz: tzinfo) -> datetime:
    """The UTC instant a naive local ``wall`` time fires at under the DST rules above.

    Non-decreasing in ``wall``, which is what lets the day's fire times be binary-searched.
    """
    first = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
    if first.astimezone(tz).replace(tzinfo=None) == wall:
        return first  # exists; fold=0 is the first occurrence when it exists twice
    # In a gap: fold=1 maps with the offset after the transition (an instant before it), fold=0
    # with the offset before (an instant after it). The transition lies between; find it.
    low = math.floor(_epoch_s(wall.replace(tzinfo=tz, fold=1)))
    high = math.ceil(_epoch_s(first))
    after_offset = first.astimezone(tz).utcoffset()
    while high - low > 1:
        middle = (low + high) // 2
        if datetime.fromtimestamp(middle, tz).utcoffset() == after_offset:
            high = middle
        else:
            low = middle
    return datetime.fromtimestamp(high, UTC)


def resolve_timezone(name: str) -> tzinfo:
    """An IANA zone, or ``local`` (``$TZ`` if it names a zone, else /etc/localtime, else UTC)."""
    if name == "local":
        return _local_timezone()
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as error:
        hint = "use an IANA name such as Europe/Berlin, or local"
        raise CronError(f"unknown timezone {name!r} ({hint})") from error


def parse_schedule(expression: str, timezone: str = "UTC") -> Schedule:
    """Parse ``expression``; raises :class:`CronError` with a one-line message."""
    if not isinstance(expression, str) or not expression.strip():
        raise CronError(f"invalid cron expression {expression!r}: expected {_FORMS}")
    tz = resolve_timezone(timezone)
    text = expression.strip()
    if text.lower().startswith("@every"):
        match = _EVERY.fullmatch(text)
        if match is None:
            expected = "expected @every N{s,m,h}, e.g. @every 30s"
            raise CronError(f"invalid schedule {expression!r}: {expected}")
        return EverySchedule(int(match.group(1)) * _UNIT_S[match.group(2).lower()])
    if text.startswith("@") and text.lower() not in MACROS:
        raise CronError(f"unknown schedule {expression!r}: expected {_FORMS}")
    return CronSchedule(text, tz)


def _parse_field(
    text: str, name: str, low: int, high: int, names: list[str], *, first: int = 0
) -> set[int]:
    values: set[int] = set()
    for part in text.split(","):
        base, slash, step_text = part.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) < 1:
                raise CronError(f"{name}: invalid step in {part!r}")
            step = int(step_text)
        if base == "*":
            start, end = low, high
        elif "-" in base:
            left, _, right = base.partition("-")
            start = _value(left, name, low, high, names, first)
            end = _value(right, name, low, high, names, first)
            if start > end:
                raise CronError(f"{name}: range {base!r} runs backwards")
        else:
            start = _value(base, name, low, high, names, first)
            end = high if slash else start
        values.update(range(start, end + 1, step))
    return values


def _value(text: str, name: str, low: int, high: int, names: list[str], first: int) -> int:
    lowered = text.lower()
    if lowered in names:
        return names.index(lowered) + first
    if not text.isdigit():
        raise CronError(f"{name}: {text!r} is not a number" + (" or a name" if names else ""))
    number = int(text)
    if not low <= number <= high:
        raise CronError(f"{name}: {number} is out of range {low}-{high}")
    return number


def _first_index(count: int, predicate: Callable[[int], bool]) -> int:
    """The first index in ``range(count)`` where a monotone (False...True) predicate holds."""
    low, high = 0, count
    while low < high:
        middle = (low + high) // 2
        if predicate(middle):
            high = middle
        else:
            low = middle + 1
    return low


def _local_date(moment: datetime, tz: tzinfo) -> date:
    _epoch_s(moment)  # rejects naive datetimes, which astimezone() would read as local time
    return moment.astimezone(tz).date()


def _epoch_s(moment: datetime) -> float:
    if moment.tzinfo is None:
        raise ValueError("naive datetime; pass a timezone-aware one")
    return moment.timestamp()


def _local_timezone() -> tzinfo:
    name = os.environ.get("TZ", "").lstrip(":")
    if name:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            pass  # a POSIX TZ string such as "CET-1CEST"; fall back to the system zone
    try:
        with open("/etc/localtime", "rb") as handle:
            return ZoneInfo.from_file(handle, key="localtime")
    except (OSError, ValueError):
        return UTC
