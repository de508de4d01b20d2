"""Business hours: hand-worked cases (DST, holidays, outside hours) and a brute-force check."""
from __future__ import annotations

import random
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from transforms.business_hours import (
    DEFAULT_CALENDAR,
    Calendar,
    CalendarError,
    business_seconds,
    calendar_for,
    parse_calendar,
)

US = 1_000_000
H = 3600


def us(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp()) * US


BERLIN = parse_calendar("berlin", {
    "timezone": "Europe/Berlin",
    "hours": {d: ["09:00-17:00"] for d in ("mon", "tue", "wed", "thu", "fri")} | {"sun": ["00:00-24:00"]},
    "holidays": ["2026-04-03"],
    "teams": ["billing"],
    "customers": ["de-*"],
})


def test_default_calendar_is_weekdays_nine_to_five_utc():
    # Friday 16:00 -> Monday 10:00: 1 h on Friday + 1 h on Monday
    assert business_seconds(DEFAULT_CALENDAR, us("2026-03-06T16:00:00+00:00"), us("2026-03-09T10:00:00+00:00")) == 2 * H


def test_event_outside_hours_starts_the_clock_at_the_next_opening():
    # Saturday 12:00 -> Monday 09:30 = 30 minutes
    assert business_seconds(DEFAULT_CALENDAR, us("2026-03-07T12:00:00+00:00"), us("2026-03-09T09:30:00+00:00")) == 1800
    # both outside hours on one evening: zero
    assert business_seconds(DEFAULT_CALENDAR, us("2026-03-09T18:00:00+00:00"), us("2026-03-09T23:00:00+00:00")) == 0


def test_spring_forward_day_is_23_hours_long():
    # Sunday 2026-03-29 in Berlin: 00:00 CET = 23:00Z on 28th, 24:00 CEST = 22:00Z on 29th
    assert business_seconds(BERLIN, us("2026-03-28T00:00:00+00:00"), us("2026-03-30T00:00:00+00:00")) == 23 * H


def test_fall_back_day_is_25_hours_long():
    assert business_seconds(BERLIN, us("2026-10-24T00:00:00+00:00"), us("2026-10-26T00:00:00+00:00")) == 25 * H


def test_office_hours_follow_local_time_across_dst():
    # Friday 27 March 09:00 CET is 08:00Z; Monday 30 March 09:00 CEST is 07:00Z
    assert business_seconds(BERLIN, us("2026-03-27T08:00:00+00:00"), us("2026-03-27T08:00:01+00:00")) == 1
    assert business_seconds(BERLIN, us("2026-03-30T06:59:00+00:00"), us("2026-03-30T07:01:00+00:00")) == 60


def test_holidays_are_closed():
    # Good Friday 2026-04-03 is a holiday: Thursday 16:00 CEST -> Monday 10:00 CEST = 1 h + (Sunday 24 h) + 1 h
    assert business_seconds(BERLIN, us("2026-04-02T14:00:00+00:00"), us("2026-04-06T08:00:00+00:00")) == 26 * H


def test_calendar_choice_customer_segment_then_team_then_default():
    other = Calendar(name="us", timezone="America/New_York", teams=("billing",))
    assert calendar_for([other, BERLIN], "de-42", ["billing"]).name == "berlin"  # segment first
    assert calendar_for([other, BERLIN], "fr-1", ["billing"]).name == "us"  # then first listed team
    assert calendar_for([other, BERLIN], "fr-1", ["tech"]) is DEFAULT_CALENDAR
    named_default = Calendar(name="default", timezone="Asia/Tokyo")
    assert calendar_for([named_default], "x", []) is named_default


@pytest.mark.parametrize("table, message", [
    ({"timezone": "Mars/Olympus"}, "unknown time zone"),
    ({"hours": {"mon": ["17:00-09:00"]}}, "ends before it starts"),
    ({"hours": {"mon": ["09:00-12:00", "11:00-13:00"]}}, "overlap"),
    ({"hours": {"funday": ["09:00-12:00"]}}, "unknown weekday"),
    ({"hours": {"mon": ["9-5"]}}, "HH:MM"),
    ({"hours": {"mon": ["09:00-25:00"]}}, "time of day"),
    ({"holidays": ["christmas"]}, "not a date"),
])
def test_bad_calendars_are_named(table, message):
    with pytest.raises(CalendarError, match=message):
        parse_calendar("x", table)


def brute_force(calendar: Calendar, start_us: int, end_us: int) -> int:
    """Seconds counted one minute-aligned step at a time, in local time, independently of the
    interval arithmetic (the test instants are whole minutes)."""
    zone = ZoneInfo(calendar.timezone)
    total = 0
    t = start_us // US
    while t < end_us // US:
        local = datetime.fromtimestamp(t, zone)
        minute = local.hour * 60 + local.minute
        open_now = local.date() not in calendar.holidays and any(
            a <= minute < b for a, b in calendar.hours[local.weekday()])
        total += 60 if open_now else 0
        t += 60
    return total


@pytest.mark.parametrize("seed", range(4))
def test_agrees_with_a_minute_by_minute_count(seed):
    rng = random.Random(seed)
    calendars = [BERLIN, DEFAULT_CALENDAR, parse_calendar("ny", {
        "timezone": "America/New_York", "hours": {"mon": ["08:30-12:00", "13:00-18:45"], "sat": ["22:00-24:00"],
                                                  "sun": ["00:00-03:00"]},
        "holidays": [date(2026, 11, 2)]})]
    # around both DST switches of both zones, and ordinary weeks
    anchors = [datetime(2026, 3, 8, tzinfo=timezone.utc), datetime(2026, 3, 29, tzinfo=timezone.utc),
               datetime(2026, 10, 25, tzinfo=timezone.utc), datetime(2026, 11, 1, tzinfo=timezone.utc),
               datetime(2026, 6, 10, tzinfo=timezone.utc)]
    for _ in range(8):
        calendar = rng.choice(calendars)
        anchor = rng.choice(anchors)
        start = anchor + timedelta(minutes=rng.randint(-3 * 1440, 1440))
        end = start + timedelta(minutes=rng.randint(0, 4 * 1440))
        a, b = int(start.timestamp()) * US, int(end.timestamp()) * US
        assert business_seconds(calendar, a, b) == brute_force(calendar, a, b), (calendar.name, start, end)


def test_microseconds_are_exact():
    start = us("2026-03-09T08:59:59+00:00") + 999_999
    assert business_seconds(DEFAULT_CALENDAR, start, us("2026-03-09T09:00:01+00:00")) == 1.0
    assert business_seconds(DEFAULT_CALENDAR, us("2026-03-09T09:00:00+00:00"), us("2026-03-09T09:00:00+00:00") + 7) == 7e-6
