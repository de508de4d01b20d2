"""Fuzzing the real pipeline with hostile input: every message is landed, a duplicate, or a
dead letter with a reason; the run never stops; every batch balances.

Each example sends a mix of hostile messages to fresh topics (some to the wrong topic), runs
the real micro-batch pipeline over them with a random batch size and a random future-skew
limit, and compares what landed with the pure classification of each message.
"""
from __future__ import annotations

import json
import math
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from pipelines.kafka_config import KafkaSettings
from transforms.dedup import bucket_of
from transforms.parse import REASONS, ParseLimits, SourceRef, parse_chunk, parse_record
from transforms.staging import DEAD_LETTER_SCHEMA, EVENT_SCHEMA, write_rows
from tests.support import new_topics, run_once, send, table

MAX_BYTES = 4000
STREAMS = ("tickets", "chats", "surveys")


def now() -> datetime:
    return datetime.now(timezone.utc)


def valid_event(i: int) -> dict:
    return {"event_id": f"fz-{i}", "event_type": "ticket.created", "occurred_at": "2026-10-01T10:00:00+02:00",
            "customer_id": f"c{i % 4}", "schema_version": 1, "ticket_id": f"T{i}", "channel": "web"}


OTHER_EVENTS = [  # valid on their own topic, unknown_event_type on another
    {"event_type": "chat.started", "chat_id": "C1", "channel": "chat"},
    {"event_type": "chat.ended", "chat_id": "C1", "outcome": "escalated", "ticket_id": "T1"},
    {"event_type": "ticket.assigned", "ticket_id": "T1", "handler_type": "bot", "team": "tier1"},
    {"event_type": "ticket.status_changed", "ticket_id": "T1", "status": "reopened"},  # not a status
    {"event_type": "survey.responded", "survey_id": "S1", "ticket_id": "T1", "csat": 5, "nps": 10},
    {"event_type": "survey.responded", "survey_id": "S2", "chat_id": "C1", "csat": 6},  # out of range
    {"event_type": "survey.responded", "survey_id": "S3", "csat": 3},  # references no thread
    {"event_type": "ticket.created", "ticket_id": "T1", "channel": "fax"},  # unknown channel
]
KNOWN_FIELD_NAMES = ["csat", "nps", "status", "outcome", "author", "team", "agent_id", "chat_id", "survey_id", "public"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10,
)


@st.composite
def hostile(draw, skew_s: int) -> tuple[str, bytes | None]:
    """(stream of the topic it is sent to, message value)."""
    kinds = ["garbage", "text", "huge", "deep", "wrong_type", "nan", "bad_id", "far_time", "bad_time", "future",
             "unknown_fields", "other_type", "empty", "surrogate", "poison_number", "valid", "valid"]
    kind = draw(st.sampled_from(kinds))
    event = valid_event(draw(st.integers(0, 30)))  # a small id space: re-deliveries happen
    if kind == "garbage":
        return "tickets", draw(st.binary(max_size=300))
    if kind == "text":
        return "tickets", draw(st.text(max_size=200)).encode()
    if kind == "huge":
        return "tickets", json.dumps({**event, "subject": "x" * (MAX_BYTES + draw(st.integers(1, 5000)))}).encode()
    if kind == "deep":
        if draw(st.booleans()):
            # Python's json parser recurses: between ~800 and ~2000 levels whether it gives up
            # (too_deep) or not (not_object) depends on the caller's stack, so the fuzzer stays
            # clear of that band; beyond 2000 levels the message is too large anyway.
            depth = draw(st.integers(20, 500) | st.integers(2001, 3000))
            return "tickets", ("[" * depth + "]" * depth).encode()
        depth = draw(st.integers(20, 900))
        nested = json.loads("[" * depth + "]" * depth)
        return "tickets", json.dumps({**event, "x": nested}).encode()
    if kind == "wrong_type":
        field = draw(st.sampled_from(sorted(event)))
        return "tickets", json.dumps({**event, field: draw(json_values)}).encode()
    if kind == "nan":
        field = draw(st.sampled_from(["priority", "schema_version", "x", "csat", "nps"]))
        return "tickets", json.dumps({**event, field: draw(st.sampled_from([math.nan, math.inf, -math.inf]))}).encode()
    if kind == "bad_id":
        field = draw(st.sampled_from(["event_id", "customer_id", "ticket_id"]))
        return "tickets", json.dumps({**event, field: draw(st.sampled_from([None, "", "x" * 200, 7, [], {}]))}).encode()
    if kind == "far_time":
        year = draw(st.sampled_from([1, 1899, 1969, 1999, 2100, 9999]))
        return "tickets", json.dumps({**event, "occurred_at": f"{year:04d}-01-01T00:00:00Z"}).encode()
    if kind == "bad_time":
        bad = draw(st.sampled_from(["2026-10-01T10:00:00", "2026-10-01", "now", "2026-02-30T00:00:00Z",
                                    "2026-10-01T25:00:00Z", "2026-10-01T10:00:00+24:00", 1790000000, None]))
        return "tickets", json.dumps({**event, "occurred_at": bad}).encode()
    if kind == "future":  # clearly inside or clearly outside the configured skew limit
        minutes = draw(st.sampled_from([skew_s // 60 - 30, skew_s // 60 + 30]))
        at = now() + timedelta(minutes=minutes)
        return "tickets", json.dumps({**event, "occurred_at": at.isoformat()}).encode()
    if kind == "unknown_fields":
        names = st.text(min_size=1, max_size=10) | st.sampled_from(KNOWN_FIELD_NAMES)
        extra = draw(st.dictionaries(names.filter(lambda k: k not in event), json_values, max_size=5))
        return "tickets", json.dumps({**extra, **event}).encode()
    if kind == "other_type":
        other = draw(st.sampled_from(OTHER_EVENTS))
        return draw(st.sampled_from(STREAMS)), json.dumps({**event, "ticket_id": None, **other}).encode()
    if kind == "empty":
        return draw(st.sampled_from(STREAMS)), draw(st.sampled_from([None, b""]))
    if kind == "surrogate":
        field = draw(st.sampled_from(["event_id", "customer_id", "ticket_id", "channel", "x"]))
        return "tickets", json.dumps({**event, field: "a\ud800b"}).encode()
    if kind == "poison_number":
        value = draw(st.sampled_from([10**30, -(2**40), 1e300, "5", [], True, 4.5]))
        return "tickets", json.dumps({**event, draw(st.sampled_from(["csat", "nps"])): value}).encode()
    return "tickets", json.dumps(event).encode()


@pytest.fixture(autouse=True)
def _no_replica(monkeypatch):
    monkeypatch.setenv("CXJ_REPLICA", "off")  # the read replica is not under test; keeps examples fast


# no shrinking: each example is a real pipeline run (~2 s); the falsifying example is printed whole
@settings(max_examples=10, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_hostile_input_never_stops_the_pipeline_and_never_disappears(broker: KafkaSettings, tmp_path_factory, data):
    skew_s = data.draw(st.sampled_from([3600, 6 * 3600, 86_400]), label="max_future_skew_s")
    messages = [data.draw(hostile(skew_s)) for _ in range(data.draw(st.integers(1, 60), label="messages"))]
    topics = new_topics(broker)
    db = tmp_path_factory.mktemp("fuzz") / "fuzz.duckdb"
    sent = send(broker, topics, [(stream, b"k", value) for stream, value in messages])
    limits = ParseLimits(max_message_bytes=MAX_BYTES, max_future_skew_s=skew_s)
    batches = run_once(db, broker, topics, limits=limits, max_batch_events=data.draw(st.integers(5, 50), label="batch"))
    assert sum(b.consumed for b in batches) == sent
    assert all(b.consumed == b.landed + b.duplicates + b.dead_letters for b in batches)
    # the pure classification of each message predicts what landed
    now_us = int(now().timestamp() * 1_000_000)
    expected_events, expected_reasons, expected_raw = set(), Counter(), Counter()
    for stream, value in messages:
        kind, row = parse_record(value, SourceRef("t", 0, 0), stream, now_us, limits)
        if kind == "event":
            expected_events.add(row["event_id"])
        else:
            expected_reasons[row["reason"]] += 1
            expected_raw[value or b""] += 1
    assert {r[0] for r in table(db, "SELECT event_id FROM events")} == expected_events
    assert Counter(dict(table(db, "SELECT reason, count(*) FROM dead_letters GROUP BY reason"))) == expected_reasons
    assert Counter(bytes(r[0]) for r in table(db, "SELECT raw FROM dead_letters")) == expected_raw
    assert set(expected_reasons) <= set(REASONS)
    assert table(db, "SELECT count(*) FROM dead_letters WHERE detail IS NULL OR detail = ''") == [(0,)]
    assert table(db, "SELECT sum(duplicates) FROM pipeline_batches") == [(sent - sum(expected_reasons.values()) - len(expected_events),)]


def test_future_skew_limit_is_configurable(broker, topics, db):
    """The same event two hours ahead: accepted with a 1-day limit, dead-lettered with a 1-hour one."""
    ahead = {**valid_event(1), "occurred_at": (now() + timedelta(hours=2)).isoformat()}
    send(broker, topics, [("tickets", b"c1", json.dumps(ahead).encode())])
    run_once(db, broker, topics, limits=ParseLimits(max_future_skew_s=3600))
    assert table(db, "SELECT reason FROM dead_letters") == [("timestamp_out_of_range",)]
    other = db.with_name("lenient.duckdb")
    run_once(other, broker, topics, limits=ParseLimits(max_future_skew_s=86_400))
    assert table(other, "SELECT event_id FROM events") == [("fz-1",)]


BASE = valid_event(0)
SURVEY = {**BASE, "event_type": "survey.responded", "survey_id": "S", "ticket_id": "T0"}
# Values that once stopped the pipeline (a crash in a Beam stage fails the batch, and the restart
# meets the same message again): name -> (message, stream, expected outcome)
POISON = {
    "csat as text on a ticket": ({**BASE, "csat": "abc"}, "event"),
    "csat as a list on a ticket": ({**BASE, "csat": [1]}, "event"),
    "csat beyond 64 bits on a ticket": ({**BASE, "csat": 10**30}, "event"),
    "nps 1e300 on a ticket": ({**BASE, "nps": 1e300}, "event"),
    "csat true on a ticket": ({**BASE, "csat": True}, "event"),
    "lone surrogate in event_id": ({**BASE, "event_id": "\ud800"}, "not_utf8"),
    "lone surrogate in customer_id": ({**BASE, "customer_id": "c\udfff"}, "not_utf8"),
    "lone surrogate in ticket_id": ({**BASE, "ticket_id": "\ud800"}, "not_utf8"),
    "lone surrogate in team": ({**BASE, "team": "\ud800"}, "not_utf8"),
    "lone surrogate in an unknown field": ({**BASE, "note": ["\udbff"]}, "not_utf8"),
    "lone surrogate in event_type": ({**BASE, "event_type": "\ud800"}, "unknown_event_type"),
    "lone surrogate in channel": ({**BASE, "channel": "\ud800"}, "schema_violation"),
    "a surrogate pair (emoji) is fine": ({**BASE, "subject": "\U0001F600"}, "event"),
    "csat 4.0 on a survey": ({**SURVEY, "csat": 4.0}, "event"),
    "nps 4.5 on a survey": ({**SURVEY, "nps": 4.5}, "schema_violation"),
    "duplicate keys": (None, "event"),
}


@pytest.mark.parametrize("name", POISON)
def test_poison_values_are_contained(name, tmp_path):
    """What the Beam ingest stage does with one record: parse, bucket by event_id, stage as Parquet."""
    doc, expected = POISON[name]
    if doc is None:
        value = json.dumps(BASE)[:-1].encode() + b', "event_id": "again"}'
    else:
        value = json.dumps(doc).encode()  # ensure_ascii: a lone surrogate travels as a \\ud800 escape
    stream = "surveys" if doc and doc["event_type"] == "survey.responded" else "tickets"
    events, dead = parse_chunk([("t", 0, 0, None, value)], {"t": stream}, int(now().timestamp() * 1e6))
    for row in events:
        bucket_of(row["event_id"], 16)
        if row["event_type"] != "survey.responded":
            assert row["csat"] is None and row["nps"] is None  # scores elsewhere are unknown fields
    write_rows(str(tmp_path / "events.parquet"), events, EVENT_SCHEMA)
    write_rows(str(tmp_path / "dead.parquet"), dead, DEAD_LETTER_SCHEMA)
    assert ("event" if events else dead[0]["reason"]) == expected
