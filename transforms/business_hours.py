"""Business-hours calendars and the business time between two instants.

Helpdesk SLAs are measured in business time: a ticket created on Friday evening and answered
on Monday at 09:30 waited 30 business minutes, not 63 hours. A calendar is a time zone, weekly
opening hours in local wall-clock time, and holidays (whole local dates). Business time between
two instants is the length of their overlap with the calendar's open intervals, so an event
outside hours starts the clock at the next opening.

Exact across daylight-saving changes: each open interval is built from the local date and the
local wall-clock times, then converted to UTC with ``zoneinfo`` (the system's IANA database), so
an interval that spans a DST switch is really 23 h or 25 h long. A wall-clock time that does not
exist on a spring-forward day is read with the offset in force before the gap (02:30 in a
one-hour gap is 03:30 after it); one that exists twice on a fall-back day is its first
occurrence (``fold=0``).
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Iterator, Optional, Sequence
from zoneinfo import ZoneInfo

US = 1_000_000
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
ONE_DAY = timedelta(days=1)
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

# (start, end) in minutes after local midnight; end may be 1440 ("24:00").
Interval = tuple[int, int]


@dataclass(frozen=True)
class Calendar:
    """One business calendar. ``hours[i]`` are the open intervals of weekday i (0 = Monday)."""

    name: str
    timezone: str = "UTC"
    hours: tuple[tuple[Interval, ...], ...] = ((),) * 7
    holidays: frozenset[date] = frozenset()
    teams: tuple[str, ...] = ()
    customers: tuple[str, ...] = ()  # fnmatch patterns of customer_id (a customer segment)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def matches_customer(self, customer_id: str) -> bool:
        return any(fnmatch.fnmatchcase(customer_id, pattern) for pattern in self.customers)


NINE_TO_FIVE = ((9 * 60, 17 * 60),)
DEFAULT_CALENDAR = Calendar(name="default", timezone="UTC", hours=(NINE_TO_FIVE,) * 5 + ((), ()))


def _instant_us(local_day: date, minutes: int, zone: ZoneInfo) -> int:
    """Epoch microseconds of a local wall-clock time (minutes after midnight, up to 1440)."""
    day = local_day + timedelta(days=minutes // 1440)
    minutes %= 1440
    local = datetime.combine(day, time(minutes // 60, minutes % 60), tzinfo=zone)  # fold=0
    return (local - EPOCH) // timedelta(microseconds=1)


# Open intervals by local date, per calendar (journeys cluster on few days). One dict per
# calendar, looked up once per measurement rather than once per day: hashing a Calendar hashes
# all its hours and holidays, which cost more than the measurement's own arithmetic.
_DAYS: dict[Calendar, dict[date, tuple[tuple[int, int], ...]]] = {}
_MAX_DAYS_PER_CALENDAR = 65536
_MAX_CALENDARS = 64


def _day_table(calendar: Calendar) -> dict[date, tuple[tuple[int, int], ...]]:
    """The cache of ``calendar``'s open intervals by local date (emptied when it grows past its
    bound, like the LRU cache it replaces: the cached values never change)."""
    table = _DAYS.get(calendar)
    if table is None or len(table) >= _MAX_DAYS_PER_CALENDAR:
        if len(_DAYS) >= _MAX_CALENDARS:
            _DAYS.clear()
        table = _DAYS[calendar] = {}
    return table


def _day_intervals_us(calendar: Calendar, day: date, zone: ZoneInfo) -> tuple[tuple[int, int], ...]:
    """The open intervals of one local date as instants."""
    if day in calendar.holidays:
        return ()
    return tuple((_instant_us(day, a, zone), _instant_us(day, b, zone)) for a, b in calendar.hours[day.weekday()])


def _clipped_intervals_us(calendar: Calendar, start_us: int, end_us: int) -> Iterator[tuple[int, int]]:
    """The calendar's open intervals that overlap [start_us, end_us], clipped to it, in order."""
    zone = calendar.zone
    table = _day_table(calendar)
    day = datetime.fromtimestamp(start_us // US, zone).date() - ONE_DAY
    last = datetime.fromtimestamp(end_us // US, zone).date() + ONE_DAY
    while day <= last:
        intervals = table.get(day)
        if intervals is None:
            intervals = table[day] = _day_intervals_us(calendar, day, zone)
        for open_us, close_us in intervals:
            a, b = max(start_us, open_us), min(end_us, close_us)
            if b > a:
                yield a, b
        day += ONE_DAY


def open_intervals_us(calendar: Calendar, start_us: int, end_us: int) -> list[tuple[int, int]]:
    """The calendar's open intervals (epoch us) that overlap [start_us, end_us], clipped to it."""
    if end_us <= start_us:
        return []
    return list(_clipped_intervals_us(calendar, start_us, end_us))


def business_seconds(calendar: Calendar, start_us: int, end_us: int) -> float:
    """Business time from ``start_us`` to ``end_us`` in seconds (0 when end is not after start).
    The sum is of integer microseconds, so it is exact whatever the order of the intervals."""
    if end_us <= start_us:
        return 0 / US
    return sum(b - a for a, b in _clipped_intervals_us(calendar, start_us, end_us)) / US


def calendar_for(calendars: Sequence[Calendar], customer_id: str, teams: Sequence[str]) -> Calendar:
    """Which calendar measures a journey: the first calendar whose customer patterns match the
    customer (a segment), else the first calendar listing the journey's first known team, else
    the calendar named ``default``, else the built-in Mon-Fri 09:00-17:00 UTC."""
    for calendar in calendars:
        if calendar.matches_customer(customer_id):
            return calendar
    if teams:
        for calendar in calendars:
            if teams[0] in calendar.teams:
                return calendar
    return next((c for c in calendars if c.name == "default"), DEFAULT_CALENDAR)


# --------------------------------------------------------------------------------------
# Parsing a calendar from its TOML table
# --------------------------------------------------------------------------------------


class CalendarError(ValueError):
    """A calendar definition that cannot be used; the message names the calendar and the field."""


def _minutes(text: str, where: str) -> int:
    try:
        hh, mm = text.split(":")
        value = int(hh) * 60 + int(mm)
    except ValueError:
        raise CalendarError(f"{where}: {text!r} is not HH:MM") from None
    if not (0 <= int(mm) < 60 and 0 <= value <= 1440):
        raise CalendarError(f"{where}: {text!r} is not a time of day (00:00-24:00)")
    return value


def _intervals(spec: object, where: str) -> tuple[Interval, ...]:
    if isinstance(spec, str):
        spec = [spec]
    if not isinstance(spec, list):
        raise CalendarError(f"{where}: expected a list of 'HH:MM-HH:MM'")
    out = []
    for item in spec:
        if not isinstance(item, str) or item.count("-") != 1:
            raise CalendarError(f"{where}: {item!r} is not 'HH:MM-HH:MM'")
        a, b = (_minutes(part.strip(), where) for part in item.split("-"))
        if b <= a:
            raise CalendarError(f"{where}: {item!r} ends before it starts")
        out.append((a, b))
    out.sort()
    for (_, end), (start, _) in zip(out, out[1:]):
        if start < end:
            raise CalendarError(f"{where}: intervals overlap")
    return tuple(out)


def parse_calendar(name: str, table: dict) -> Calendar:
    """A calendar from its TOML table: timezone, hours.{mon..sun}, holidays, teams, customers."""
    where = f"calendar {name!r}"
    zone = table.get("timezone", "UTC")
    try:
        ZoneInfo(zone)
    except Exception:
        raise CalendarError(f"{where}: unknown time zone {zone!r}") from None
    hours_spec = table.get("hours", {})
    if not isinstance(hours_spec, dict):
        raise CalendarError(f"{where}: hours must be a table of weekdays")
    unknown = set(hours_spec) - set(WEEKDAYS)
    if unknown:
        raise CalendarError(f"{where}: unknown weekday(s) {sorted(unknown)} (use {', '.join(WEEKDAYS)})")
    hours = tuple(_intervals(hours_spec.get(d, []), f"{where}, hours.{d}") for d in WEEKDAYS)
    holidays = set()
    for item in table.get("holidays", []):
        try:
            holidays.add(item if isinstance(item, date) else date.fromisoformat(str(item)))
        except ValueError:
            raise CalendarError(f"{where}: holiday {item!r} is not a date (YYYY-MM-DD)") from None
    return Calendar(
        name=name,
        timezone=zone,
        hours=hours,
        holidays=frozenset(holidays),
        teams=tuple(str(t) for t in table.get("teams", [])),
        customers=tuple(str(c) for c in table.get("customers", [])),
    )


def optional_business_seconds(calendar: Calendar, start_us: Optional[int], end_us: Optional[int]) -> Optional[float]:
    if start_us is None or end_us is None:
        return None
    return business_seconds(calendar, start_us, end_us)


__all__ = [
    "Calendar",
    "CalendarError",
    "DEFAULT_CALENDAR",
    "business_seconds",
    "calendar_for",
    "open_intervals_us",
    "optional_business_seconds",
    "parse_calendar",
]
