"""Performance regression guard (CI): per-event cost and per-cycle overhead must not grow more
than 2x against the ratios stored in benchmarks/perf_baseline.json.

Both are CPU seconds of the real pipeline (real broker, Beam, DuckDB, replica) divided by the CPU
seconds of a fixed pure-Python workload in the same run (benchmarks/guard.py), so the guard
compares ratios, never absolute times.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import guard  # noqa: E402

from tests.support import new_topics  # noqa: E402


def test_per_event_cost_and_per_cycle_overhead_stay_within_2x_of_the_baseline(broker, tmp_path):
    baseline = json.loads(guard.BASELINE.read_text())
    measured = guard.measure(broker, lambda: new_topics(broker), tmp_path)
    assert measured["per_event_cpu_us"] > 0 and measured["cycle_cpu_s"] > 0
    assert guard.check(measured, baseline) == []


def test_the_guard_fails_a_cost_above_twice_the_baseline():
    baseline = {"per_cycle_ratio": 1.0, "per_event_ratio": 100.0}
    assert guard.check({"per_cycle_ratio": 2.0, "per_event_ratio": 200.0}, baseline) == []
    slow_cycle = guard.check({"per_cycle_ratio": 2.01, "per_event_ratio": 100.0}, baseline)
    slow_event = guard.check({"per_cycle_ratio": 1.0, "per_event_ratio": 200.5}, baseline)
    assert len(slow_cycle) == 1 and slow_cycle[0].startswith("per_cycle_ratio 2.01 > 2 x baseline 1.0")
    assert len(slow_event) == 1 and slow_event[0].startswith("per_event_ratio 200.5 > 2 x baseline 100.0")
