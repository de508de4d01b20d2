"""benchmarks/by_slice.py: a following run's latency and cycles by slice of its load, read from a
real store's tables. The rows are written by hand so that every figure is known: three batches
in the first two-minute slice, one in the second, an empty batch left out."""
from __future__ import annotations

import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import by_slice  # noqa: E402

from pipelines.storage.store import Store  # noqa: E402

T0 = datetime(2026, 12, 7, 3, 0, tzinfo=timezone.utc)


def _at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# (batch_id, started s, finished s, records read, ingest s, assemble s, land s)
BATCHES = [
    (1, 1.0, 3.0, 100, 0.5, 0.5, 1.0),
    (2, 4.0, 5.0, 200, 0.25, 0.25, 0.5),
    (3, 100.0, 104.0, 600, 1.0, 1.0, 2.0),
    (4, 110.0, 111.0, 0, 0.0, 0.0, 0.0),  # nothing read (a control batch): not a cycle of the load
    (5, 130.0, 136.0, 900, 2.0, 2.0, 2.0),
]
# (kafka timestamp s, landed s): latency 1, 3 and 2 s in the first slice, 10 s in the second
EVENTS = [(0.0, 1.0), (10.0, 13.0), (20.0, 22.0), (125.0, 135.0)]


@pytest.fixture()
def con(tmp_path: Path):
    store = Store(tmp_path / "slices.duckdb")
    db = store.con
    for batch_id, started, finished, consumed, ingest, assemble, land in BATCHES:
        db.execute(
            """INSERT INTO pipeline_batches (batch_id, started_at, finished_at, duration_s, ingest_s, assemble_s,
                   land_s, consumed, landed, duplicates, dead_letters, customers_touched, journeys_written, offsets)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, 0, 0, 0, '[]')""",
            [batch_id, _at(started), _at(finished), finished - started, ingest, assemble, land, consumed, consumed])
    for n, (kafka_s, landed_s) in enumerate(EVENTS):
        db.execute(
            """INSERT INTO events (event_id, event_type, occurred_at, customer_id, payload, source_topic,
                   source_partition, source_offset, kafka_timestamp, batch_id, landed_at)
               VALUES (?, 'ticket.created', ?, 'c', '{}', 't', 0, ?, ?, 1, ?)""",
            [f"e{n}", _at(kafka_s), n, _at(kafka_s), _at(landed_s)])
    yield db
    store.close()


def test_latency_by_slice_counts_each_event_in_the_slice_of_its_kafka_timestamp(con):
    assert by_slice.latency_by_slice(con, 120) == [
        {"from_s": 0, "events": 3, "p50": 2.0, "p99": 2.98, "max": 3.0},
        {"from_s": 120, "events": 1, "p50": 10.0, "p99": 10.0, "max": 10.0},
    ]


def test_cycles_by_slice_splits_a_cycle_into_its_batch_and_the_time_before_the_next(con):
    first, second = by_slice.cycles_by_slice(con, 120)
    assert first == {"from_s": 0, "batches": 3, "records_per_batch": 300, "batch_s": pytest.approx(7 / 3, abs=1e-3),
                     "ingest_s": pytest.approx(1.75 / 3, abs=1e-3), "assemble_s": pytest.approx(1.75 / 3, abs=1e-3),
                     "land_s": pytest.approx(3.5 / 3, abs=1e-3),
                     # 3 -> 4, 5 -> 100, and 104 -> 130: the empty batch at 110 is no cycle's start
                     "between_s": pytest.approx((1 + 95 + 26) / 3, abs=1e-3)}
    assert second == {"from_s": 120, "batches": 1, "records_per_batch": 900, "batch_s": 6.0, "ingest_s": 2.0,
                      "assemble_s": 2.0, "land_s": 2.0, "between_s": None}


def test_latency_by_slice_reads_as_one_line(con):
    assert by_slice.describe_latency(by_slice.latency_by_slice(con, 120), 120) == (
        "0-2 min p50 2.0s p99 2.98s; 2-4 min p50 10.0s p99 10.0s")


def test_cycles_by_slice_reads_as_one_line(con):
    line = by_slice.describe_cycles(by_slice.cycles_by_slice(con, 120), 120)
    assert line == ("0-2 min 3 batches of 300 records, 2.33s each (ingest 0.58, assemble 0.58, land 1.17) + 40.67s between; "
                    "2-4 min 1 batch of 900 records, 6.00s each (ingest 2.00, assemble 2.00, land 2.00) + -s between")
