"""Fuzzing the real pipeline with hostile input: every message is landed, a duplicate, or a
dead letter with exactly the reason it deserves; the run never stops; every batch balances.

Each generated message carries its expected outcome, written down here from the contract
(`schemas/v1/`) and the documented rules (docs/architecture.md "Bad input", docs/security.md
"Data", docs/reliability.md), never computed by the parser under test: e.g. oversize ->
`too_large`, invalid UTF-8 -> `not_utf8`, `NaN` -> `not_json`, nesting past 32 levels ->
`too_deep`, valid with unknown fields -> an event whose payload is the message as sent,
duplicate keys -> the last occurrence wins. The messages go to fresh topics (some to the wrong
topic), the real micro-batch pipeline runs over them with a random batch size and a random
future-skew limit, and every message is then found by its Kafka coordinates: as an event
(its `event_id`, payload byte for byte), as the duplicate of an earlier delivery, or as a
dead letter with its raw bytes and the expected reason.
"""
from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Optional

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from pipelines.kafka.settings import KafkaSettings
from tests.support import new_topics, run_once, send, table
from transforms.batch_files import DEAD_LETTER_SCHEMA, EVENT_SCHEMA, write_rows
from transforms.dedup import bucket_of
from transforms.parse import ParseLimits, parse_chunk

MAX_BYTES = 4000
MAX_DEPTH = 32  # documented: JSON nested deeper than 32 levels is rejected (the top-level object is level 1)
STREAMS = ("tickets", "chats", "surveys")
CHANNELS = ("email", "web", "phone", "chat", "messaging", "social", "sms")  # the contract's enum


def now() -> datetime:
    return datetime.now(timezone.utc)


def valid_event(event_id: str, i: int = 0) -> dict:
    return {"event_id": event_id, "event_type": "ticket.created", "occurred_at": "2026-10-01T10:00:00+02:00",
            "customer_id": f"c{i % 4}", "schema_version": 1, "ticket_id": f"T{i}", "channel": "web"}


@dataclass(frozen=True)
class Message:
    """One hostile message and what must become of it (written down independently of the parser)."""

    kind: str
    stream: str  # the topic it is sent to
    value: Optional[bytes]
    outcome: str  # "event" | "duplicate" | "dead"
    reason: Optional[str] = None  # for "dead": the exact reason code
    event_id: Optional[str] = None  # for "event"/"duplicate": the id it lands under


def dead(kind: str, value: Optional[bytes], reason: str, stream: str = "tickets") -> Message:
    return Message(kind, stream, value, "dead", reason=reason)


def landed(kind: str, doc: dict, stream: str = "tickets", value: Optional[bytes] = None) -> Message:
    return Message(kind, stream, value if value is not None else json.dumps(doc).encode(), "event", event_id=doc["event_id"])


# Events of other types: (type-specific fields, its own stream, expected outcome on its own stream)
OTHER_EVENTS = [
    ({"event_type": "chat.started", "chat_id": "C1", "channel": "chat"}, "chats", None),
    ({"event_type": "chat.ended", "chat_id": "C1", "outcome": "escalated", "ticket_id": "T1"}, "chats", None),
    ({"event_type": "ticket.assigned", "ticket_id": "T1", "handler_type": "bot", "team": "tier1"}, "tickets", None),
    ({"event_type": "survey.responded", "survey_id": "S1", "ticket_id": "T1", "csat": 5, "nps": 10}, "surveys", None),
    ({"event_type": "ticket.status_changed", "ticket_id": "T1", "status": "reopened"}, "tickets", "schema_violation"),  # not a status
    ({"event_type": "survey.responded", "survey_id": "S2", "chat_id": "C1", "csat": 6}, "surveys", "schema_violation"),  # csat is 1..5
    ({"event_type": "survey.responded", "survey_id": "S3", "csat": 3}, "surveys", "schema_violation"),  # references no thread
    ({"event_type": "ticket.created", "ticket_id": "T1", "channel": "fax"}, "tickets", "schema_violation"),  # not a channel
    ({"event_type": "ticket.assigned", "ticket_id": "T1", "handler_type": "agent"}, "tickets", "schema_violation"),  # no agent, no team
]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10,
)
KINDS = ["invalid_utf8", "not_json_text", "huge", "size_limit_exact", "top_level_array", "too_large_array",
         "deep_object", "depth_limit", "nan", "schema_version", "event_type", "bad_id", "bad_channel",
         "far_time", "bad_time", "occurred_at_not_text", "future", "unknown_fields", "scores_off_survey",
         "other_type", "empty", "surrogate", "duplicate_keys", "redelivery", "valid"]


@st.composite
def hostile(draw, i: int, skew_s: int, earlier: list[Message]) -> Message:
    """Message number ``i`` (its event id is unique unless it is a re-delivery)."""
    kind = draw(st.sampled_from(KINDS), label=f"kind {i}")
    event = valid_event(f"fz-{i}", i)
    if kind == "invalid_utf8":  # a byte that never occurs in UTF-8, anywhere in random bytes
        head, tail = draw(st.binary(max_size=150)), draw(st.binary(max_size=150))
        return dead(kind, head + draw(st.sampled_from([b"\xff", b"\xfe", b"\xc0\xaf", b"\xed\xa0\x80"])) + tail, "not_utf8")
    if kind == "not_json_text":  # text that cannot start a JSON value
        return dead(kind, ("<" + draw(st.text(max_size=200))).encode(), "not_json")
    if kind == "huge":
        return dead(kind, json.dumps({**event, "subject": "x" * (MAX_BYTES + draw(st.integers(1, 5000)))}).encode(), "too_large")
    if kind == "size_limit_exact":  # exactly at the limit is accepted, one byte more is not
        over = draw(st.booleans())
        pad = MAX_BYTES + over - len(json.dumps({**event, "subject": ""}).encode())
        doc = {**event, "subject": "x" * pad}
        assert len(json.dumps(doc).encode()) == MAX_BYTES + over
        return dead(kind, json.dumps(doc).encode(), "too_large") if over else landed(kind, doc)
    if kind == "top_level_array":  # valid JSON, but not an object
        depth = draw(st.integers(1, 500))
        return dead(kind, ("[" * depth + "]" * depth).encode(), "not_object")
    if kind == "too_large_array":  # beyond 2000 levels the message is over the size limit anyway
        depth = draw(st.integers(2001, 3000))
        return dead(kind, ("[" * depth + "]" * depth).encode(), "too_large")
    if kind == "deep_object":
        depth = draw(st.integers(MAX_DEPTH, 900))  # arrays under the object: 1 + depth levels
        return dead(kind, json.dumps({**event, "x": json.loads("[" * depth + "]" * depth)}).encode(), "too_deep")
    if kind == "depth_limit":  # 32 levels pass, 33 do not
        levels = draw(st.sampled_from([MAX_DEPTH, MAX_DEPTH + 1]))
        doc = {**event, "x": json.loads("[" * (levels - 1) + "]" * (levels - 1))}
        return dead(kind, json.dumps(doc).encode(), "too_deep") if levels > MAX_DEPTH else landed(kind, doc)
    if kind == "nan":
        field = draw(st.sampled_from(["priority", "schema_version", "x", "csat", "nps", "subject"]))
        return dead(kind, json.dumps({**event, field: draw(st.sampled_from([math.nan, math.inf, -math.inf]))}).encode(), "not_json")
    if kind == "schema_version":
        version = draw(st.sampled_from([2, 0, -1, "1", 1.5, None, True, [1], {"v": 1}]))
        doc = {**event, "schema_version": version}
        if draw(st.booleans()):
            del doc["schema_version"]
        return dead(kind, json.dumps(doc).encode(), "unknown_schema_version")
    if kind == "event_type":
        known = {"ticket.created", "ticket.assigned", "ticket.message", "ticket.status_changed", "chat.started",
                 "chat.assigned", "chat.message", "chat.ended", "survey.responded"}
        value = draw(st.text(max_size=30).filter(lambda t: t not in known) | st.sampled_from([None, 7, [], {}]))
        return dead(kind, json.dumps({**event, "event_type": value}).encode(), "unknown_event_type")
    if kind == "bad_id":  # the contract: non-empty strings of at most 128 characters
        field = draw(st.sampled_from(["event_id", "customer_id", "ticket_id"]))
        value = draw(st.sampled_from([None, "", "x" * 129, "x" * 200, 7, 1.5, True, [], {}, ["a"]]))
        doc = {**event, field: value}
        if draw(st.booleans()):
            del doc[field]
        return dead(kind, json.dumps(doc).encode(), "schema_violation")
    if kind == "bad_channel":
        value = draw(st.text(max_size=12).filter(lambda c: c not in CHANNELS) | st.sampled_from([None, 3, ["web"]]))
        return dead(kind, json.dumps({**event, "channel": value}).encode(), "schema_violation")
    if kind == "far_time":  # before 2000-01-01 or far in the future
        year = draw(st.sampled_from([1, 1899, 1969, 1999, 2100, 9999]))
        return dead(kind, json.dumps({**event, "occurred_at": f"{year:04d}-01-01T00:00:00Z"}).encode(), "timestamp_out_of_range")
    if kind == "bad_time":  # a string, but not RFC 3339 with an offset, or no such instant
        bad = draw(st.sampled_from(["2026-10-01T10:00:00", "2026-10-01", "now", "2026-02-30T00:00:00Z",
                                    "2026-10-01T25:00:00Z", "2026-10-01T10:00:00+24:00", "2026-10-01 10:00:00Z",
                                    "2026-10-01T10:00:00.Z", "1790000000"]))
        return dead(kind, json.dumps({**event, "occurred_at": bad}).encode(), "bad_timestamp")
    if kind == "occurred_at_not_text":  # the contract requires a string
        bad = draw(st.sampled_from([1790000000, None, [], {"at": "2026-10-01T10:00:00Z"}, ""]))
        return dead(kind, json.dumps({**event, "occurred_at": bad}).encode(), "schema_violation")
    if kind == "future":  # clearly inside or clearly outside the configured skew limit
        inside = draw(st.booleans())
        doc = {**event, "occurred_at": (now() + timedelta(seconds=skew_s + (-1800 if inside else 1800))).isoformat()}
        return landed(kind, doc) if inside else dead(kind, json.dumps(doc).encode(), "timestamp_out_of_range")
    if kind == "unknown_fields":  # kept in the payload as sent
        names = st.text(min_size=1, max_size=10).map(lambda n: "x_" + n)
        extra = draw(st.dictionaries(names, json_values, min_size=1, max_size=5))
        return landed(kind, {**extra, **event})
    if kind == "scores_off_survey":  # csat/nps are read only from surveys: elsewhere they are unknown fields
        value = draw(st.sampled_from([10**30, -(2**40), 1e300, "abc", "5", [], True, 4.5, None, {"x": 1}]))
        return landed(kind, {**event, draw(st.sampled_from(["csat", "nps"])): value})
    if kind == "other_type":
        fields, own, invalid = draw(st.sampled_from(OTHER_EVENTS))
        doc = {k: v for k, v in event.items() if k not in ("ticket_id", "channel")} | fields
        stream = draw(st.sampled_from(STREAMS))
        if stream != own:
            return dead(kind, json.dumps(doc).encode(), "unknown_event_type", stream)
        return dead(kind, json.dumps(doc).encode(), invalid, stream) if invalid else landed(kind, doc, stream)
    if kind == "empty":  # no value, or a tombstone
        return dead(kind, draw(st.sampled_from([None, b""])), "empty_message", draw(st.sampled_from(STREAMS)))
    if kind == "surrogate":  # a lone surrogate escape is not Unicode text
        field = draw(st.sampled_from(["event_id", "customer_id", "ticket_id", "x", "subject"]))
        return dead(kind, json.dumps({**event, field: "a" + draw(st.sampled_from(["\ud800", "\udfff", "\udbff"])) + "b"}).encode(),
                    "not_utf8")
    if kind == "duplicate_keys":  # documented: the last occurrence of a key wins
        variant = draw(st.sampled_from(["event_id", "channel_valid_last", "channel_invalid_last"]))
        text = json.dumps(event)[:-1]
        if variant == "event_id":
            winner = {**event, "event_id": f"fz-{i}-last"}
            return landed(kind, winner, value=(text + f', "event_id": "fz-{i}-last"}}').encode())
        if variant == "channel_valid_last":
            return landed(kind, event, value=(json.dumps({**event, "channel": "fax"})[:-1] + ', "channel": "web"}').encode())
        return dead(kind, (text + ', "channel": "fax"}').encode(), "schema_violation")
    if kind == "redelivery" and any(m.outcome == "event" for m in earlier):
        original = draw(st.sampled_from([m for m in earlier if m.outcome == "event"]))
        return Message(kind, original.stream, original.value, "duplicate", event_id=original.event_id)
    return landed("valid", event)


def send_recording(broker: KafkaSettings, topics: dict[str, str], messages: list[Message]) -> list[tuple[str, int, int]]:
    """Sends in order with one key (one partition per topic) and returns each message's coordinates."""
    from kafka import KafkaProducer

    producer = KafkaProducer(**broker.client_kwargs(), linger_ms=5, acks="all")
    futures = [producer.send(topics[m.stream], key=b"k", value=m.value) for m in messages]
    producer.flush()
    coordinates = [(f.get(30).topic, f.get(30).partition, f.get(30).offset) for f in futures]
    producer.close()
    return coordinates


@pytest.fixture(autouse=True)
def _no_replica(monkeypatch):
    monkeypatch.setenv("CXJ_REPLICA", "off")  # the read replica is not under test; keeps examples fast


# no shrinking: each example is a real pipeline run (~2 s); the falsifying example is printed whole
@settings(max_examples=10, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_hostile_input_never_stops_the_pipeline_and_never_disappears(broker: KafkaSettings, tmp_path_factory, data):
    skew_s = data.draw(st.sampled_from([3600, 6 * 3600, 86_400]), label="max_future_skew_s")
    messages: list[Message] = []
    for i in range(data.draw(st.integers(1, 60), label="messages")):
        messages.append(data.draw(hostile(i, skew_s, messages)))
    topics = new_topics(broker)
    db = tmp_path_factory.mktemp("fuzz") / "fuzz.duckdb"
    where = send_recording(broker, topics, messages)
    limits = ParseLimits(max_message_bytes=MAX_BYTES, max_future_skew_s=skew_s)
    batches = run_once(db, broker, topics, limits=limits, max_batch_events=data.draw(st.integers(5, 50), label="batch"))

    events = {(t, p, o): (event_id, payload) for t, p, o, event_id, payload in table(
        db, 'SELECT source_topic, source_partition, source_offset, event_id, payload FROM events')}
    letters = {(t, p, o): (bytes(raw), reason, detail) for t, p, o, raw, reason, detail in table(
        db, 'SELECT topic, "partition", "offset", raw, reason, detail FROM dead_letters')}
    for number, (message, at) in enumerate(zip(messages, where)):
        label = f"message {number} ({message.kind}) at {at}"
        if message.outcome == "dead":
            assert at not in events, label
            assert at in letters, f"{label}: expected a dead letter {message.reason}, none landed"
            raw, reason, detail = letters.pop(at)
            assert reason == message.reason, f"{label}: reason {reason} ({detail}), expected {message.reason}"
            assert raw == (message.value or b""), label
            assert detail, label
        elif message.outcome == "event":
            assert at not in letters, f"{label}: dead-lettered as {letters.get(at)}"
            assert events.pop(at) == (message.event_id, message.value.decode()), label  # payload byte for byte
        else:  # a re-delivery: nothing lands at its own coordinates
            assert at not in events and at not in letters, label
    assert events == {} and letters == {}, "rows that no message explains"
    expected = Counter(m.outcome for m in messages)
    assert sum(b.consumed for b in batches) == len(messages)
    assert all(b.consumed == b.landed + b.duplicates + b.dead_letters for b in batches)
    assert (sum(b.landed for b in batches), sum(b.duplicates for b in batches), sum(b.dead_letters for b in batches)) == (
        expected["event"], expected["duplicate"], expected["dead"])
    assert table(db, "SELECT coalesce(sum(landed), 0), coalesce(sum(duplicates), 0), coalesce(sum(dead_letters), 0) "
                     "FROM pipeline_batches") == [(expected["event"], expected["duplicate"], expected["dead"])]


def test_every_kind_is_generated_with_its_expectation():
    """The generator's table covers every documented reason code that can reach the pipeline
    (unknown_topic cannot: the pipeline reads only its configured topics) and both outcomes."""
    reasons = {"not_utf8", "not_json", "not_object", "too_large", "too_deep", "empty_message", "unknown_schema_version",
               "unknown_event_type", "schema_violation", "bad_timestamp", "timestamp_out_of_range"}
    seen: set = set()

    @settings(max_examples=400, deadline=None, database=None)
    @given(st.data())
    def collect(data):
        earlier: list[Message] = []
        for i in range(3):
            message = data.draw(hostile(i, 3600, earlier))
            earlier.append(message)
            seen.add(message.reason or message.outcome)

    collect()
    assert reasons | {"event", "duplicate"} <= seen, sorted(reasons | {"event", "duplicate"} - seen)


@settings(max_examples=300, deadline=None, database=None)
@given(skew_s=st.sampled_from([3600, 86_400]), data=st.data())
def test_each_message_alone_gets_its_written_down_outcome(skew_s, data):
    """The same table against the parser alone, many more examples than the pipeline runs (a
    fast check, also used by the mutation run): outcome, reason, event_id, payload as sent."""
    from transforms.parse import SourceRef, parse_record

    earlier: list[Message] = []
    for i in range(5):
        message = data.draw(hostile(i, skew_s, earlier))
        earlier.append(message)
        limits = ParseLimits(max_message_bytes=MAX_BYTES, max_future_skew_s=skew_s)
        kind, row = parse_record(message.value, SourceRef("t", 0, i), message.stream, int(now().timestamp() * 1e6), limits)
        if message.outcome == "dead":
            assert (kind, row["reason"]) == ("dead", message.reason), (message.kind, row.get("detail"))
            assert row["raw"] == (message.value or b"") and row["detail"]
        else:
            assert kind == "event", (message.kind, row.get("reason"), row.get("detail"))
            assert (row["event_id"], row["payload"]) == (message.event_id, message.value.decode())


def test_future_skew_limit_is_configurable(broker, topics, db):
    """The same event two hours ahead: accepted with a 1-day limit, dead-lettered with a 1-hour one."""
    ahead = {**valid_event("fz-1", 1), "occurred_at": (now() + timedelta(hours=2)).isoformat()}
    send(broker, topics, [("tickets", b"c1", json.dumps(ahead).encode())])
    run_once(db, broker, topics, limits=ParseLimits(max_future_skew_s=3600))
    assert table(db, "SELECT reason FROM dead_letters") == [("timestamp_out_of_range",)]
    other = db.with_name("lenient.duckdb")
    run_once(other, broker, topics, limits=ParseLimits(max_future_skew_s=86_400))
    assert table(other, "SELECT event_id FROM events") == [("fz-1",)]


BASE = valid_event("fz-0")
SURVEY = {**BASE, "event_type": "survey.responded", "survey_id": "S", "ticket_id": "T0"}
BASE_TEXT = json.dumps(BASE)[:-1]
# Values that once stopped the pipeline (a crash in a Beam stage fails the batch, and the restart
# meets the same message again): name -> (message, expected outcome: "event" or the reason,
# and for events the event_id and channel that must land)
POISON: dict[str, tuple[Any, str]] = {
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
    # documented: of two equal keys the last wins
    "duplicate event_id keys: the last wins": (BASE_TEXT + ', "event_id": "again"}', "event"),
    "duplicate channel keys, valid last": (json.dumps({**BASE, "channel": "fax"})[:-1] + ', "channel": "sms"}', "event"),
    "duplicate channel keys, invalid last": (BASE_TEXT + ', "channel": "fax"}', "schema_violation"),
}
POISON_LANDS_AS = {"duplicate event_id keys: the last wins": ("again", "web"),
                   "duplicate channel keys, valid last": ("fz-0", "sms")}


@pytest.mark.parametrize("name", POISON)
def test_poison_values_are_contained(name, tmp_path):
    """What the Beam ingest stage does with one record: parse, bucket by event_id, stage as Parquet."""
    doc, expected = POISON[name]
    # ensure_ascii: a lone surrogate travels as a \\ud800 escape
    value = doc.encode() if isinstance(doc, str) else json.dumps(doc).encode()
    stream = "surveys" if isinstance(doc, dict) and doc["event_type"] == "survey.responded" else "tickets"
    events, dead_rows = parse_chunk([("t", 0, 0, None, value)], {"t": stream}, int(now().timestamp() * 1e6))
    for row in events:
        bucket_of(row["event_id"], 16)
        if row["event_type"] != "survey.responded":
            assert row["csat"] is None and row["nps"] is None  # scores elsewhere are unknown fields
        assert row["payload"] == value.decode()
        if name in POISON_LANDS_AS:
            assert (row["event_id"], row["channel"]) == POISON_LANDS_AS[name]
    write_rows(str(tmp_path / "events.parquet"), events, EVENT_SCHEMA)
    write_rows(str(tmp_path / "dead.parquet"), dead_rows, DEAD_LETTER_SCHEMA)
    assert len(events) + len(dead_rows) == 1
    assert ("event" if events else dead_rows[0]["reason"]) == expected
