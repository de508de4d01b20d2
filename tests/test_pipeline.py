"""End to end on real parts: the local broker, real Beam runs, a real DuckDB file."""
from __future__ import annotations

import json
from datetime import datetime, timezone

from pipelines.kafka.simulator import generate_customer_events, to_messages
from tests.support import journeys, run_once, send, send_events, table

START = datetime(2026, 10, 1, tzinfo=timezone.utc)


def simulated(customers: int, seed: int, **mess: float) -> list[tuple[str, bytes, bytes]]:
    events = generate_customer_events(customers, seed, START)
    return to_messages(events, seed, mess.get("out_of_order", 0.0), mess.get("duplicates", 0.0), mess.get("malformed", 0.0))


def test_simulate_run_once_lands_every_message(broker, topics, db):
    messages = simulated(150, seed=3, out_of_order=0.05, duplicates=0.03, malformed=0.02)
    sent = send(broker, topics, messages)
    batches = run_once(db, broker, topics)
    assert batches, "nothing landed"
    unique_valid = {json.loads(v)["event_id"] for _, _, v in messages if _valid_json_event(v)}
    events, dead, consumed, landed, dups, dead_b = table(
        db,
        """SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM dead_letters),
                  sum(consumed), sum(landed), sum(duplicates), sum(dead_letters) FROM pipeline_batches""",
    )[0]
    assert consumed == sent
    assert consumed == landed + dups + dead_b
    assert events == landed and dead == dead_b
    assert events <= len(unique_valid) and dead > 0 and dups > 0
    # every batch balances on its own too
    for row in table(db, "SELECT consumed, landed + duplicates + dead_letters FROM pipeline_batches"):
        assert row[0] == row[1]
    # each dead letter keeps its coordinates, raw bytes and a reason
    assert table(db, "SELECT count(*) FROM dead_letters WHERE reason IS NULL OR raw IS NULL OR topic IS NULL") == [(0,)]
    # every landed thread event belongs to exactly one journey
    assert table(db, "SELECT count(*) - count(DISTINCT event_id) FROM journey_events") == [(0,)]
    assert table(db, "SELECT count(*) FROM events WHERE event_type <> 'survey.responded' "
                     "AND event_id NOT IN (SELECT event_id FROM journey_events)") == [(0,)]
    assert table(db, "SELECT count(*) - count(DISTINCT journey_id) FROM journeys") == [(0,)]
    statuses = dict(table(db, "SELECT status, count(*) FROM journeys GROUP BY status"))
    assert statuses.get("resolved", 0) > 0 and sum(statuses.values()) >= 150
    # offsets reached the end of every partition
    assert table(db, "SELECT sum(next_offset) FROM pipeline_offsets")[0][0] == sent


def _valid_json_event(value: bytes) -> bool:
    try:
        doc = json.loads(value)
    except ValueError:
        return False
    return isinstance(doc, dict) and "event_id" in doc


def test_rerun_with_nothing_new_changes_nothing(broker, topics, db):
    send(broker, topics, simulated(40, seed=5, duplicates=0.05))
    run_once(db, broker, topics)
    before = {t: table(db, f"SELECT * FROM {t} ORDER BY ALL")
              for t in ("journeys", "journey_events", "pipeline_offsets", "pipeline_batches")}
    assert run_once(db, broker, topics) == []
    after = {t: table(db, f"SELECT * FROM {t} ORDER BY ALL") for t in before}
    assert after == before


def test_batch_split_gives_same_journeys_as_one_batch(broker, topics, tmp_path):
    send(broker, topics, simulated(60, seed=11, out_of_order=0.1, duplicates=0.05, malformed=0.02))
    one_batch = run_once(tmp_path / "one.duckdb", broker, topics, max_batch_events=1_000_000)
    many = run_once(tmp_path / "many.duckdb", broker, topics, max_batch_events=97)
    assert len(one_batch) == 1 and len(many) > 5
    assert journeys(tmp_path / "many.duckdb") == journeys(tmp_path / "one.duckdb")


def test_redelivered_event_in_later_batch_counts_once(broker, topics, db):
    event = {
        "event_id": "dup-1", "event_type": "ticket.created", "occurred_at": "2026-10-02T08:00:00Z",
        "customer_id": "cust-dup", "schema_version": 1, "ticket_id": "T-dup", "channel": "web",
    }
    send_events(broker, topics, [event])
    run_once(db, broker, topics)
    send_events(broker, topics, [event])
    run_once(db, broker, topics)
    assert table(db, "SELECT count(*) FROM events") == [(1,)]
    assert table(db, "SELECT sum(duplicates), count(*) FROM pipeline_batches") == [(1, 2)]
    assert table(db, "SELECT contact_count FROM journeys") == [(1,)]
