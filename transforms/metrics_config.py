"""Settings of the service metrics (business hours, durable resolution, repeat contact).

They come from one TOML file (``cxj run --calendars FILE``), read with the standard library's
``tomllib``. Without a file the defaults apply, so the demo needs no configuration:
the built-in calendar (Mon-Fri 09:00-17:00 UTC, no holidays), durable after 7 days, repeat
contacts counted within 7 days. The dataclass is frozen and picklable: Beam ships it to workers.

File format (every key optional)::

    durable_days = 7                  # resolved and still resolved this many days later
    repeat_contact_window_days = 7    # a contact within this time after a resolution repeats it

    [calendars.default]               # used when no other calendar matches
    timezone = "UTC"
    hours = { mon = ["09:00-17:00"], tue = ["09:00-17:00"], wed = ["09:00-17:00"],
              thu = ["09:00-17:00"], fri = ["09:00-17:00"] }

    [calendars.emea]
    timezone = "Europe/Berlin"
    teams = ["billing", "support"]    # journeys whose first assigned team is one of these
    customers = ["de-*"]              # or customers whose id matches (a segment); checked first
    holidays = [2026-12-25, 2026-12-26]
    hours.mon = ["08:00-12:00", "13:00-17:00"]
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from transforms.business_hours import Calendar, CalendarError, parse_calendar

DEFAULT_DURABLE_DAYS = 7.0
DEFAULT_REPEAT_CONTACT_WINDOW_DAYS = 7.0
DAY_S = 86_400


class MetricsConfigError(ValueError):
    """A configuration file that cannot be used: one line naming the file and the problem."""


@dataclass(frozen=True)
class MetricsConfig:
    calendars: tuple[Calendar, ...] = ()
    durable_days: float = DEFAULT_DURABLE_DAYS
    repeat_contact_window_days: float = DEFAULT_REPEAT_CONTACT_WINDOW_DAYS
    source: Optional[str] = field(default=None, compare=False)  # the file it came from

    @property
    def durable_us(self) -> int:
        return int(round(self.durable_days * DAY_S * 1_000_000))

    @property
    def repeat_contact_window_us(self) -> int:
        return int(round(self.repeat_contact_window_days * DAY_S * 1_000_000))


def parse_metrics_config(text: str, source: str = "<text>") -> MetricsConfig:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise MetricsConfigError(f"{source}: not valid TOML: {exc}") from None
    known = {"durable_days", "repeat_contact_window_days", "calendars"}
    unknown = set(doc) - known
    if unknown:
        raise MetricsConfigError(f"{source}: unknown setting(s) {sorted(unknown)} (known: {sorted(known)})")
    numbers = {}
    for name, default in (("durable_days", DEFAULT_DURABLE_DAYS),
                          ("repeat_contact_window_days", DEFAULT_REPEAT_CONTACT_WINDOW_DAYS)):
        value = doc.get(name, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise MetricsConfigError(f"{source}: {name} must be a number of days >= 0, not {value!r}")
        numbers[name] = float(value)
    tables = doc.get("calendars", {})
    if not isinstance(tables, dict):
        raise MetricsConfigError(f"{source}: [calendars.NAME] tables expected")
    try:
        calendars = tuple(parse_calendar(name, table) for name, table in tables.items())
    except CalendarError as exc:
        raise MetricsConfigError(f"{source}: {exc}") from None
    return MetricsConfig(calendars=calendars, source=source, **numbers)


def load_metrics_config(path: Optional[Path | str]) -> MetricsConfig:
    """The settings in ``path``; the defaults when ``path`` is None."""
    if path is None:
        return MetricsConfig()
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise MetricsConfigError(f"cannot read calendars file {path}: {exc.strerror or exc}") from None
    return parse_metrics_config(text, str(path))
