"""The --calendars file: defaults, every setting, and one-line errors for unusable files."""
from __future__ import annotations

import pytest

from transforms.metrics_config import MetricsConfig, MetricsConfigError, load_metrics_config, parse_metrics_config


def test_no_file_means_the_documented_defaults():
    config = load_metrics_config(None)
    assert config == MetricsConfig()
    assert config.durable_days == 7 and config.repeat_contact_window_days == 7 and config.calendars == ()


def test_a_full_file(tmp_path):
    path = tmp_path / "calendars.toml"
    path.write_text("""
durable_days = 3
repeat_contact_window_days = 2.5
[calendars.emea]
timezone = "Europe/Berlin"
teams = ["billing"]
customers = ["de-*"]
holidays = [2026-12-25, "2026-12-26"]
hours.mon = ["08:00-12:00", "13:00-17:00"]
hours.sat = "10:00-14:00"
""")
    config = load_metrics_config(path)
    assert config.durable_us == 3 * 86_400_000_000 and config.repeat_contact_window_us == int(2.5 * 86_400e6)
    (emea,) = config.calendars
    assert emea.hours[0] == ((480, 720), (780, 1020)) and emea.hours[5] == ((600, 840),) and emea.hours[6] == ()
    assert len(emea.holidays) == 2 and emea.teams == ("billing",)


@pytest.mark.parametrize("text, message", [
    ("durable_days = -1", "durable_days"),
    ("durable_days = 'seven'", "durable_days"),
    ("repeat_contact_window = 7", "unknown setting"),
    ("calendars = 3", "calendars"),
    ("[calendars.x]\ntimezone = 'Nowhere/Land'", "unknown time zone"),
    ("not toml at all [", "not valid TOML"),
])
def test_unusable_files_fail_with_one_line_naming_the_file(text, message):
    with pytest.raises(MetricsConfigError, match=message) as info:
        parse_metrics_config(text, "cal.toml")
    assert str(info.value).startswith("cal.toml: ") and "\n" not in str(info.value)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(MetricsConfigError, match="cannot read calendars file .*nope.toml"):
        load_metrics_config(tmp_path / "nope.toml")
