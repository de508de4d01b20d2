"""Fuzzing the real pipeline with hostile input: every message is landed, a duplicate, or a
dead letter with a reason; the run never stops; every batch balances."""
from __future__ import annotations

import json
import math
from datetime import datetime, timezone

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.kafka_config import KafkaSettings
from transforms.parse import REASONS, ParseLimits, SourceRef, parse_record
from tests.support import new_topics, run_once, send, table

MAX_BYTES = 4000
NOW_US = int(datetime.now(timezone.utc).timestamp() * 1_000_000)


def valid_event(i: int) -> dict:
    return {"event_id": f"fz-{i}", "event_type": "ticket.created", "occurred_at": "2026-10-01T10:00:00+02:00",
            "customer_id": f"c{i % 4}", "schema_version": 1, "ticket_id": f"T{i}", "channel": "web"}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10,
)


@st.composite
def hostile(draw, i: int) -> bytes:
    kind = draw(st.sampled_from([
        "garbage", "huge", "deep", "wrong_type", "nan", "bad_id", "far_time", "unknown_fields", "valid", "dup",
    ]))
    event = valid_event(draw(st.integers(0, 10_000)))
    if kind == "garbage":
        return draw(st.binary(max_size=300))
    if kind == "huge":
        return json.dumps({**event, "subject": "x" * (MAX_BYTES + draw(st.integers(1, 5000)))}).encode()
    if kind == "deep":
        depth = draw(st.integers(20, 3000))
        return ("[" * depth + "]" * depth).encode() if draw(st.booleans()) else json.dumps({**event, "x": json.loads("[" * min(depth, 900) + "]" * min(depth, 900))}).encode()
    if kind == "wrong_type":
        field = draw(st.sampled_from(sorted(event)))
        return json.dumps({**event, field: draw(json_values)}).encode()
    if kind == "nan":
        return json.dumps({**event, "priority": draw(st.sampled_from([math.nan, math.inf, -math.inf]))}).encode()
    if kind == "bad_id":
        return json.dumps({**event, draw(st.sampled_from(["event_id", "customer_id", "ticket_id"])): draw(st.sampled_from([None, "", "x" * 200]))}).encode()
    if kind == "far_time":
        year = draw(st.sampled_from([1, 1899, 1999, 2100, 9999]))
        return json.dumps({**event, "occurred_at": f"{year:04d}-01-01T00:00:00Z"}).encode()
    if kind == "unknown_fields":
        extra = draw(st.dictionaries(st.text(min_size=1, max_size=10).filter(lambda k: k not in event), json_values, max_size=5))
        return json.dumps({**extra, **event}).encode()
    return json.dumps(event).encode()


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_hostile_input_never_stops_the_pipeline_and_never_disappears(broker: KafkaSettings, tmp_path_factory, data):
    values = [data.draw(hostile(i)) for i in range(data.draw(st.integers(1, 40)))]
    topics = new_topics(broker)
    db = tmp_path_factory.mktemp("fuzz") / "fuzz.duckdb"
    sent = send(broker, topics, [("tickets", b"k", v) for v in values])
    limits = ParseLimits(max_message_bytes=MAX_BYTES)
    batches = run_once(db, broker, topics, limits=limits, max_batch_events=data.draw(st.integers(5, 50)))
    assert sum(b.consumed for b in batches) == sent
    assert all(b.consumed == b.landed + b.duplicates + b.dead_letters for b in batches)
    # the pure classification of each message predicts what landed
    expected_events = set()
    expected_dead = 0
    for v in values:
        kind, row = parse_record(v, SourceRef("t", 0, 0), "tickets", NOW_US, limits)
        if kind == "event":
            expected_events.add(row["event_id"])
        else:
            expected_dead += 1
    assert {r[0] for r in table(db, "SELECT event_id FROM events")} == expected_events
    reasons = table(db, "SELECT reason, count(*) FROM dead_letters GROUP BY reason")
    assert sum(n for _, n in reasons) == expected_dead
    assert all(reason in REASONS for reason, _ in reasons)
    assert table(db, "SELECT count(*) FROM dead_letters WHERE detail IS NULL OR detail = ''") == [(0,)]
