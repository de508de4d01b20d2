"""benchmarks/fresh_memory.py: a real child process fills new memory, timed.

The reading is only worth reporting if the child really touched what it claims: its resident
high-water mark must cover the size asked for (a child that only reserved the memory, or was
never run, would report a fast machine)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import fresh_memory  # noqa: E402


@pytest.mark.parametrize("mb", [32, 128])
def test_the_child_touches_the_memory_it_times(mb: int) -> None:
    reading = fresh_memory.fresh_memory(mb)
    assert reading.mb == mb
    assert reading.peak_mb >= mb, f"the child's peak {reading.peak_mb:.0f} MB is below the {mb} MB it timed"
    assert reading.peak_mb < mb + 100, "the child held much more than it filled: the reading is not of that size"
    assert 0 < reading.seconds < 60
    assert reading.mb_per_s == pytest.approx(mb / reading.seconds)


def test_a_size_that_is_not_positive_is_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        fresh_memory.fresh_memory(0)
