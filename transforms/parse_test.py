"""Every kind of bad input yields a dead letter with its reason; valid input yields one event."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transforms.parse import ParseLimits, SourceRef, _as_int, dead_letter, parse_record, parse_timestamp_us

NOW_US = 1_795_000_000_000_000  # 2026-11-18
SRC = SourceRef("cx.tickets", 2, 41, 1_700_000_000_000)


def event(**overrides) -> dict:
    base = {
        "event_id": "e-1", "event_type": "ticket.created", "occurred_at": "2026-11-01T09:30:00+01:00",
        "customer_id": "cust-1", "schema_version": 1, "ticket_id": "T-1", "channel": "email",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not ...}


def parse(value, stream="tickets", limits=ParseLimits()):
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return parse_record(raw, SRC, stream, NOW_US, limits)


def test_valid_event_keeps_unknown_fields_and_source():
    kind, row = parse(event(extra={"kept": True}))
    assert kind == "event"
    assert row["at_us"] == 1_793_521_800_000_000  # 08:30Z
    assert json.loads(row["payload"])["extra"] == {"kept": True}
    assert (row["topic"], row["partition"], row["offset"]) == ("cx.tickets", 2, 41)


@pytest.mark.parametrize(
    "value, reason",
    [
        (b"\xff\xfe", "not_utf8"),
        (b"{not json", "not_json"),
        (b'{"a": NaN}', "not_json"),
        (b"[1, 2]", "not_object"),
        (b"", "empty_message"),
        (event(schema_version=2), "unknown_schema_version"),
        (event(schema_version="1"), "unknown_schema_version"),
        (event(event_type="ticket.deleted"), "unknown_event_type"),
        (event(event_type="chat.started", chat_id="C"), "unknown_event_type"),  # wrong topic
        (event(channel="fax"), "schema_violation"),
        (event(ticket_id=...), "schema_violation"),
        (event(customer_id=""), "schema_violation"),
        (event(event_id=None), "schema_violation"),
        (event(occurred_at="yesterday"), "bad_timestamp"),
        (event(occurred_at="2026-11-01T09:30:00"), "bad_timestamp"),  # no offset
        (event(occurred_at="2026-02-30T09:30:00Z"), "bad_timestamp"),
        (event(occurred_at="2099-01-01T00:00:00Z"), "timestamp_out_of_range"),
        (event(occurred_at="1970-01-01T00:00:00Z"), "timestamp_out_of_range"),
        (b"[" * 5000 + b"]" * 5000, "too_deep"),
    ],
)
def test_bad_input_is_dead_lettered_with_reason(value, reason):
    kind, row = parse(value)
    assert kind == "dead"
    assert row["reason"] == reason
    assert row["detail"]
    assert (row["topic"], row["partition"], row["offset"]) == ("cx.tickets", 2, 41)


def test_oversized_message():
    kind, row = parse(event(subject="x" * 2000), limits=ParseLimits(max_message_bytes=1000))
    assert (kind, row["reason"]) == ("dead", "too_large")


def test_assignment_needs_agent_or_team():
    base = event(event_type="ticket.assigned", channel=..., handler_type="agent")
    assert parse(base)[1]["reason"] == "schema_violation"
    assert parse({**base, "team": "billing"})[0] == "event"
    assert parse({**base, "agent_id": "a-1"})[0] == "event"


def test_survey_scores_range():
    base = event(event_type="survey.responded", channel=..., ticket_id="T", survey_id="S")
    assert parse({**base, "csat": 5, "nps": 0}, stream="surveys")[0] == "event"
    assert parse({**base, "csat": 6}, stream="surveys")[1]["reason"] == "schema_violation"
    assert parse({**base, "nps": "9"}, stream="surveys")[1]["reason"] == "schema_violation"


def test_poison_values_are_contained():
    # scores outside surveys are unknown extra fields: kept in the payload, never cast
    kind, row = parse(event(csat="abc", nps=1e300))
    assert kind == "event" and row["csat"] is None and row["nps"] is None
    # a lone surrogate escape anywhere is not Unicode text: dead letter, not a crash downstream
    kind, row = parse(json.dumps(event(extra="\ud800")).encode())
    assert (kind, row["reason"]) == ("dead", "not_utf8")
    kind, row = parse(json.dumps(event(extra="caf\u00e9 \U0001F600")).encode())
    assert kind == "event"


def test_default_size_limit_is_one_mebibyte():
    """docs/security.md: oversized messages (--max-message-bytes, default 1 MiB) are rejected:
    1,048,576 bytes pass, one byte more is too_large."""
    bare = len(json.dumps(event(subject="")).encode())
    at_limit = json.dumps(event(subject="x" * (1_048_576 - bare))).encode()
    assert len(at_limit) == 1_048_576
    assert parse(at_limit)[0] == "event"
    kind, row = parse(at_limit[:-1] + b' }')
    assert (kind, row["reason"]) == ("dead", "too_large")


def test_accepted_time_range_boundaries():
    """docs/architecture.md: occurred_at must not lie before 2000-01-01 or more than
    --max-future-skew (default 1 day) ahead of the batch's processing time; the bounds themselves
    are inside."""
    def at(us: int) -> str:
        from datetime import datetime, timezone
        return datetime.fromtimestamp(us / 1e6, tz=timezone.utc).isoformat(timespec="microseconds")

    y2k = 946_684_800_000_000
    assert parse(event(occurred_at="2000-01-01T00:00:00Z"))[0] == "event"
    assert parse(event(occurred_at="1999-12-31T23:59:59.999999Z"))[1]["reason"] == "timestamp_out_of_range"
    assert at(y2k) == "2000-01-01T00:00:00.000000+00:00"
    day_ahead = NOW_US + 86_400 * 1_000_000
    assert parse(event(occurred_at=at(day_ahead)))[0] == "event"
    assert parse(event(occurred_at=at(day_ahead + 1)))[1]["reason"] == "timestamp_out_of_range"


def test_nesting_limit_counts_levels_not_brackets():
    """docs/security.md: JSON nested deeper than 32 levels is rejected (the top-level object is
    level 1). Many shallow lists are not deep, and exactly 32 levels pass however many brackets
    the message holds."""
    assert parse(event(extra=[[] for _ in range(40)]))[0] == "event"  # 42 brackets, 3 levels
    nested_31 = json.loads("[" * 31 + "]" * 31)
    assert parse(event(extra=nested_31, other=[[], []]))[0] == "event"  # 32 levels, 35 brackets
    kind, row = parse(event(extra=json.loads("[" * 32 + "]" * 32)))
    assert (kind, row["reason"]) == ("dead", "too_deep")  # 33 levels


def test_an_integral_float_score_on_a_survey_is_that_score():
    """Scores are read from surveys when integral: 4.0 is csat 4, and 9.0 is nps 9."""
    base = event(event_type="survey.responded", channel=..., ticket_id="T", survey_id="S")
    kind, row = parse({**base, "csat": 4.0, "nps": 9.0}, stream="surveys")
    assert (kind, row["csat"], row["nps"]) == ("event", 4, 9)


@pytest.mark.parametrize("length", [0, 1, 499, 500, 501, 502, 5000])
def test_dead_letter_detail_is_cut_at_500_characters(length):
    """docs/reliability.md, "Dead-letter details": a dead letter's detail keeps at most its first
    500 characters (code points, not bytes), whatever the reason; shorter details are kept whole.
    The raw bytes are always kept whole, so nothing of the record is lost."""
    detail = "".join(chr(ord("a") + i % 26) for i in range(length - 1)) + ("é" if length else "")
    raw = b"\x00" * 2000
    row = dead_letter(SRC, raw, "poison", detail)
    assert row["detail"] == detail[: min(length, 500)]
    assert len(row["detail"]) == min(length, 500)
    assert row["raw"] == raw and row["reason"] == "poison"
    assert (row["topic"], row["partition"], row["offset"], row["kafka_ts_ms"]) == ("cx.tickets", 2, 41, 1_700_000_000_000)


@pytest.mark.parametrize("detail_length", [499, 500, 501])
def test_parse_outcomes_get_the_same_cut(detail_length):
    """The cut applies to the parser's own dead letters too: an unknown topic's detail quotes the
    topic name, so a long enough name makes a detail of exactly 499, 500 or 501 characters."""
    fixed = len("topic '' is not one of the configured event topics")
    topic = "t" * (detail_length - fixed)
    full = f"topic '{topic}' is not one of the configured event topics"
    assert len(full) == detail_length
    kind, row = parse_record(b'{"a": 1}', SourceRef(topic, 0, 7, None), None, NOW_US)
    assert (kind, row["reason"]) == ("dead", "unknown_topic")
    assert row["detail"] == full[:500]
    assert row["detail"].endswith("topics") == (detail_length <= 500)


@pytest.mark.parametrize("length", [1, 79, 80, 81, 300])
def test_an_unknown_event_type_is_quoted_up_to_80_characters(length):
    """docs/reliability.md, "Dead-letter details": an unknown_event_type detail quotes at most the
    first 80 characters of the event_type sent (the raw bytes keep all of it)."""
    sent = "x" * (length - 1) + "y"
    kind, row = parse(event(event_type=sent))
    assert (kind, row["reason"]) == ("dead", "unknown_event_type")
    assert row["detail"] == f"event_type {sent[:80]!r} is not defined in contract v1"
    assert json.loads(row["raw"])["event_type"] == sent


def test_a_non_string_event_type_is_quoted_as_text_up_to_80_characters():
    """A number or a list as event_type is shown by its text form, cut the same way."""
    assert parse(event(event_type=12345))[1]["detail"] == "event_type '12345' is not defined in contract v1"
    as_list = list(range(100))
    kind, row = parse(event(event_type=as_list))
    assert (kind, row["reason"]) == ("dead", "unknown_event_type")
    assert row["detail"] == f"event_type {str(as_list)[:80]!r} is not defined in contract v1"
    assert len(str(as_list)) > 80


def test_an_unreadable_timestamp_is_quoted_up_to_64_characters():
    """docs/reliability.md, "Dead-letter details": a bad_timestamp detail quotes at most the first
    64 characters of occurred_at. The contract allows at most 64, so through the parser an
    unreadable occurred_at is quoted whole; the reader itself cuts longer text."""
    sent = "y" * 63 + "z"
    kind, row = parse(event(occurred_at=sent))
    assert (kind, row["reason"]) == ("dead", "bad_timestamp")
    assert row["detail"] == f"occurred_at {sent!r} is not RFC 3339 with an offset"
    assert parse(event(occurred_at=sent + "z"))[1]["reason"] == "schema_violation"  # 65: the contract's limit
    with pytest.raises(ValueError) as raised:
        parse_timestamp_us(sent + "zzz")
    assert str(raised.value) == f"occurred_at {sent!r} is not RFC 3339 with an offset"


@pytest.mark.parametrize("fraction, micros", [
    ("", 0), (".5", 500_000), (".123456", 123_456), (".1234567", 123_456), (".123456999", 123_456),
    (".9999999", 999_999), (".000000999", 0),
])
def test_fraction_digits_past_the_microsecond_are_dropped_not_rounded(fraction, micros):
    """docs/metrics.md, "Event time": occurred_at is kept to the microsecond; further digits (up
    to nine are accepted) are dropped, so .9999999 stays in its second."""
    assert parse_timestamp_us(f"2026-11-01T09:30:59{fraction}+01:00") == 1_793_521_859_000_000 + micros
    kind, row = parse(event(occurred_at=f"2026-11-01T09:30:59{fraction}Z"))
    assert (kind, row["at_us"]) == ("event", 1_793_525_459_000_000 + micros)


@pytest.mark.parametrize("value, stored", [
    (None, None), (0, 0), (10, 10), (4.0, 4), (-(2**31), -(2**31)), (2**31 - 1, 2**31 - 1),
    (-(2**31) - 1, None), (2**31, None), (float(2**31 - 1), 2**31 - 1), (float(2**31), None),
    (True, None), (False, None), ("5", None), (4.5, None), (float("inf"), None), (float("nan"), None), ([5], None),
])
def test_a_score_is_stored_only_as_an_integer_that_fits_its_column(value, stored):
    """docs/reliability.md, "Mutation check (issue 16)": a survey's csat/nps is stored as an
    INT32 when it is an integral number that fits, else NULL. The v1 contract already limits the
    scores to 1..5 and 0..10; this keeps the column safe whatever a later contract version lets
    through, so it is checked here directly at the column's bounds."""
    assert _as_int(value) == stored
    assert type(_as_int(value)) is (int if stored is not None else type(None))


def test_parse_limits_and_source_refs_are_immutable_values():
    """ParseLimits() is the shared default argument of parse_record and parse_chunk: were it
    mutable, one caller changing a limit would change every later caller's. Both are frozen, and
    equal values hash alike (usable as keys)."""
    import dataclasses

    limits = ParseLimits()
    with pytest.raises(dataclasses.FrozenInstanceError):
        limits.max_message_bytes = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        SRC.offset = 0  # type: ignore[misc]
    assert hash(ParseLimits()) == hash(limits) and {SourceRef("t", 0, 1): 1}[SourceRef("t", 0, 1)] == 1


def test_a_tombstone_is_an_empty_message_with_empty_raw_bytes():
    """A record without a value (a Kafka tombstone, value null) is an empty_message dead letter
    whose raw column holds zero bytes, like an empty value."""
    for value in (None, b""):
        kind, row = parse_record(value, SRC, "tickets", NOW_US)
        assert (kind, row["reason"], row["raw"], row["detail"]) == ("dead", "empty_message", b"", "message has no value")


# --- the batch parser's own fast path (parse_chunk) against the single-record API -----------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**200), max_value=2**200)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)

# Message texts where decoding details matter, written by hand: duplicate keys (the last wins),
# escapes of every kind, integers past 64 bits, a float that overflows to infinity, -0.0, and
# key order that canonical JSON sorts.
TRICKY_TEXTS = [
    '{"event_id":"e-1","event_type":"ticket.created","occurred_at":"2026-11-01T09:30:00Z","customer_id":"c",'
    '"schema_version":1,"ticket_id":"T","channel":"email","x":1,"x":2}',
    '{"z":"caf\\u00e9 \\ud83d\\ude00 \\n\\t\\"","event_id":"e-2","event_type":"ticket.created","occurred_at":"2026-11-01T09:30:00Z",'
    '"customer_id":"c","schema_version":1,"ticket_id":"T","channel":"email"}',
    '{"event_id":"e-3","event_type":"ticket.created","occurred_at":"2026-11-01T09:30:00Z","customer_id":"c",'
    '"schema_version":1,"ticket_id":"T","channel":"email","big":123456789012345678901234567890,"inf":1e400,"neg":-0.0}',
    '{"event_id":"e-4","event_type":"ticket.created","occurred_at":"2026-11-01T09:30:00Z","customer_id":"c",'
    '"schema_version":1,"ticket_id":"T","channel":"email","event_id":"e-4b","nested":{"b":[1,{"a":null}],"a":true}}',
    '{"event_id":"e-5","event_type":"survey.responded","occurred_at":"2026-11-01T09:30:00.123456789+05:30",'
    '"customer_id":"c","schema_version":1,"survey_id":"S","ticket_id":"T","csat":4.0,"nps":10}',
]


def chunk_of(values: list) -> list[tuple]:
    """Surveys on the surveys topic, everything else on the tickets topic."""
    return [("cx.surveys" if v and b"survey.responded" in v else "cx.tickets", i % 4, i, 1_700_000_000_000 + i, v)
            for i, v in enumerate(values)]


STREAMS = {"cx.tickets": "tickets", "cx.surveys": "surveys"}


def test_parse_chunk_gives_each_record_parse_records_outcome():
    """parse_chunk does not build a SourceRef per valid record and computes the content hash
    from the message it decoded; each record's outcome is still exactly parse_record's (event row
    or dead letter with the same reason and detail), and the hash is transforms.dedup's hash of
    the stored payload."""
    from transforms.dedup import payload_hash
    from transforms.parse import parse_chunk

    values = [t.encode() for t in TRICKY_TEXTS]
    values += [json.dumps(event(event_id=f"e-{i}", extra=i)).encode() for i in range(5)]
    values += [b"\xff\xfe", b"{not json", b'{"a": NaN}', b"[1, 2]", b"", None, b"[" * 100 + b"]" * 100,
               json.dumps(event(channel="fax")).encode(), json.dumps(event(extra="\ud800")).encode(),
               json.dumps(event(occurred_at="2099-01-01T00:00:00Z")).encode()]
    records = chunk_of(values)
    events, dead = parse_chunk(records, STREAMS, NOW_US, content_hashes=True)
    expected_events, expected_dead = [], []
    for topic, partition, offset, ts, value in records:
        kind, row = parse_record(value, SourceRef(topic, partition, offset, ts), STREAMS.get(topic), NOW_US)
        (expected_events if kind == "event" else expected_dead).append(row)
    assert [{k: v for k, v in row.items() if k != "content_hash"} for row in events] == expected_events
    assert dead == expected_dead
    assert (len(events), len(dead)) == (10, 10)
    assert all(row["content_hash"] == payload_hash(row["payload"]) for row in events)
    assert parse_chunk(records, STREAMS, NOW_US)[0] == expected_events, "no hash unless asked"


def test_the_ingests_chunk_table_holds_parse_chunks_rows():
    """The ingest's chunk table (parse_chunk_values's tuples made columns by values_table) holds
    exactly the rows parse_chunk gives, content hashes included, in order: the tuples' field
    order is the events schema's, and the dead letters are the same."""
    from transforms.batch_files import EVENT_SCHEMA, rows_table, values_table
    from transforms.parse import EVENT_ROW_FIELDS, parse_chunk, parse_chunk_values

    assert (*EVENT_ROW_FIELDS, "content_hash") == tuple(EVENT_SCHEMA.names)
    values = [t.encode() for t in TRICKY_TEXTS]
    values += [json.dumps(event(event_id=f"e-{i}", extra=i)).encode() for i in range(5)]
    values += [json.dumps({**event(event_id="s-1", event_type="survey.responded", survey_id="S-1"), "csat": 5, "nps": 3})
               .encode(), b"{not json", None]
    records = chunk_of(values)
    rows, dead = parse_chunk(records, STREAMS, NOW_US, content_hashes=True)
    tuples, tuple_dead = parse_chunk_values(records, STREAMS, NOW_US)
    assert tuple_dead == dead
    table = values_table(tuples, EVENT_SCHEMA)
    assert table.equals(rows_table(rows, EVENT_SCHEMA))
    assert table.to_pylist() == rows and len(rows) >= 6
    assert [(r["csat"], r["nps"]) for r in rows if r["event_id"] == "s-1"] == [(5, 3)], "the scored columns too"
    assert values_table([], EVENT_SCHEMA).equals(rows_table([], EVENT_SCHEMA))
    with pytest.raises(ValueError, match="23 columns"):
        values_table([tuples[0][:-1]], EVENT_SCHEMA)


@settings(max_examples=150, deadline=None)
@given(extra=st.dictionaries(st.text(max_size=12), JSON_VALUES, max_size=6), indent=st.sampled_from([None, 1]))
def test_the_content_hash_from_the_parsed_message_equals_the_payloads_hash(extra, indent):
    """For any accepted message (generated extra fields: huge integers, any float, any text
    including escapes, nesting; sent compact or indented), the hash parse_chunk computes without
    a second decode equals transforms.dedup.payload_hash of the stored payload, which decodes it
    again with the standard parser."""
    from transforms.dedup import payload_hash
    from transforms.parse import parse_chunk

    doc = {**extra, **event()}
    raw = json.dumps(doc, indent=indent).encode("utf-8", "surrogatepass")
    events, dead = parse_chunk([("cx.tickets", 0, 1, None, raw)], STREAMS, NOW_US, content_hashes=True)
    if dead:  # only a lone surrogate in the generated text may turn the message away
        assert dead[0]["reason"] in ("not_utf8", "too_deep")
        return
    assert events[0]["content_hash"] == payload_hash(events[0]["payload"])


# --- orjson's fast path (transforms/parse.py, _plain_object) against the standard decoder alone ---

def _standard_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """The parser as it is without orjson: every message read and hashed by the json module."""
    import transforms.parse as parse_module

    monkeypatch.setattr(parse_module, "_plain_object", lambda raw: None)
    monkeypatch.setattr(parse_module, "_holds_float", lambda doc: True)


def _hostile_messages() -> list[bytes]:
    """Messages where the two decoders may part: lone and reversed surrogate escapes, raw
    surrogates and bytes past U+10FFFF, a BOM, raw control characters, integers at and past 64
    bits, floats that read as integers elsewhere, NaN and Infinity, 1e400, nesting past orjson's
    limit, duplicate keys, every short escape."""
    base = event()
    texts = [json.dumps(base)[:-1] + tail for tail in (
        ', "x": "\\ud800"}', ', "x": "\\ude00\\ud83d"}', ', "x": "\\ud83d\\ude00 \\u00e9 \\/ \\b\\f\\n\\r\\t \\u0000"}',
        ', "x": 18446744073709551615}', ', "x": 18446744073709551616}', ', "x": -9223372036854775809}',
        ', "x": 123456789012345678901234567890}', ', "x": 1e400}', ', "x": -0.0}', ', "x": 1.0}', ', "x": -0}',
        ', "x": NaN}', ', "x": -Infinity}', ', "x": 1e16}', ', "channel": "chat", "channel": "email"}',
        ', "x": ' + "[" * 1100 + "]" * 1100 + "}", ', "x": ' + "[" * 20 + "1" + "]" * 20 + "}",
        ', "x": {"b": [1, {"a": null}], "a": true, "\\u00e9": "\\u2028", "\\ud83d\\ude00": 1}}',
    )]
    values = [t.encode("utf-8") for t in texts]
    values += [b"\xef\xbb\xbf" + json.dumps(base).encode(), json.dumps(base).encode()[:-1] + b', "x": "\x01"}',
               json.dumps(base).encode()[:-1] + b', "x": "\xed\xa0\x80"}', json.dumps(base).encode()[:-1] + b', "x": "\xf4\x90\x80\x80"}',
               b" \t\n\r" + json.dumps(base).encode() + b"\n", b"[1, 2]", b'"text"', b"{not json", b"", None,
               json.dumps({**base, "event_type": "survey.responded", "survey_id": "S", "csat": 4.0, "nps": 10}).encode()]
    return values


def test_the_fast_path_gives_the_standard_decoders_outcome_for_hostile_messages(monkeypatch):
    """Every record's outcome (event row with its content hash, or dead letter with reason and
    detail) is the one the json module alone gives, where the two decoders differ most."""
    from transforms.dedup import payload_hash
    from transforms.parse import parse_chunk

    records = chunk_of(_hostile_messages() + [t.encode() for t in TRICKY_TEXTS])
    fast = parse_chunk(records, STREAMS, NOW_US, content_hashes=True)
    assert all(row["content_hash"] == payload_hash(row["payload"]) for row in fast[0])
    _standard_only(monkeypatch)
    standard = parse_chunk(records, STREAMS, NOW_US, content_hashes=True)
    assert fast == standard
    assert len(fast[0]) >= 15 and len(fast[1]) >= 8, "both outcomes are exercised"


@settings(max_examples=300, deadline=None)
@given(extra=st.dictionaries(st.text(max_size=12), JSON_VALUES, max_size=6), indent=st.sampled_from([None, 1]),
       key_order=st.randoms(use_true_random=False))
def test_the_fast_path_gives_the_standard_decoders_outcome_for_generated_messages(extra, indent, key_order):
    """For generated messages (huge integers, any float, any text, nesting; keys in any order,
    compact or indented), parsing with orjson gives exactly the rows the json module alone gives,
    content hash included."""
    from transforms.dedup import payload_hash
    from transforms.parse import parse_chunk

    doc = {**extra, **event()}
    keys = list(doc)
    key_order.shuffle(keys)
    raw = json.dumps({k: doc[k] for k in keys}, indent=indent).encode("utf-8", "surrogatepass")
    records = [("cx.tickets", 0, 1, None, raw)]
    fast = parse_chunk(records, STREAMS, NOW_US, content_hashes=True)
    with pytest.MonkeyPatch.context() as patch:  # (a fixture's monkeypatch would last across examples)
        _standard_only(patch)
        standard = parse_chunk(records, STREAMS, NOW_US, content_hashes=True)
    assert fast == standard
    assert [row["content_hash"] for row in fast[0]] == [payload_hash(row["payload"]) for row in standard[0]]


def test_canonical_json_is_the_standard_encoders_for_every_character():
    """The content hash's canonical JSON of a float-free message is the same bytes from orjson
    as from the json module: each code point (surrogates aside) as a value and as a key, and
    keys mixing the planes sorted the same way."""
    import hashlib

    from transforms.dedup import content_hash
    from transforms.parse import content_hash_of

    characters = [chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    for start in range(0, len(characters), 4096):
        chunk = characters[start:start + 4096]
        doc = {"values": chunk, **{c + "k": c for c in chunk[::7]}}
        assert content_hash_of(doc) == content_hash(doc)
    mixed = {"\U0001f600": 1, "\ufffd": 2, "\ue000": 3, "z": 4, "\u00e9": 5, "": 6, "\x00": 7}
    assert content_hash_of(mixed) == content_hash(mixed) == hashlib.sha256(
        json.dumps(mixed, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()).hexdigest()
