"""Turning one Kafka record into either a valid event row or a dead letter.

Pure and total: every input, however broken, yields exactly one outcome with a reason, so
the pipeline can count consumed = landed + duplicates + dead letters for every batch.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, Optional, Union

import fastjsonschema
import orjson

from schemas import SUPPORTED_VERSIONS, validators
from transforms.events import STREAM_OF_TYPE

RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$"
)
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

# Dead-letter reason codes (stable: dashboards and alerts group by them).
NOT_UTF8 = "not_utf8"
NOT_JSON = "not_json"
NOT_OBJECT = "not_object"
TOO_LARGE = "too_large"
TOO_DEEP = "too_deep"
EMPTY_MESSAGE = "empty_message"
UNKNOWN_SCHEMA_VERSION = "unknown_schema_version"
UNKNOWN_EVENT_TYPE = "unknown_event_type"
SCHEMA_VIOLATION = "schema_violation"
BAD_TIMESTAMP = "bad_timestamp"
TIMESTAMP_OUT_OF_RANGE = "timestamp_out_of_range"
UNKNOWN_TOPIC = "unknown_topic"
POISON = "poison"  # set by the driver: a record isolated as the cause of failing batch attempts

REASONS = (
    NOT_UTF8, NOT_JSON, NOT_OBJECT, TOO_LARGE, TOO_DEEP, EMPTY_MESSAGE, UNKNOWN_SCHEMA_VERSION,
    UNKNOWN_EVENT_TYPE, SCHEMA_VIOLATION, BAD_TIMESTAMP, TIMESTAMP_OUT_OF_RANGE, UNKNOWN_TOPIC, POISON,
)

EXTRACTED_FIELDS = (
    "ticket_id", "chat_id", "survey_id", "channel", "handler_type", "agent_id", "team",
    "status", "author", "outcome",
)


@dataclass(frozen=True)
class ParseLimits:
    """Bounds that keep hostile or broken input from hurting the pipeline."""

    max_message_bytes: int = 1_048_576
    max_depth: int = 32
    # occurred_at accepted in [min_occurred_at, now + max_future_skew_s]
    min_occurred_at_us: int = 946_684_800_000_000  # 2000-01-01T00:00:00Z
    max_future_skew_s: int = 86_400


@dataclass(frozen=True)
class SourceRef:
    """Where a record came from; kept on both outcomes for lineage and replay."""

    topic: str
    partition: int
    offset: int
    kafka_ts_ms: Optional[int] = None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# One decoder for every record: json.loads(text, parse_constant=...) builds a new JSONDecoder per
# call, which cost about as much as decoding a small event. Same class, same arguments, so the
# same results and errors.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def _holds_float(doc: dict[str, Any]) -> bool:
    """Whether a float is anywhere in ``doc``'s values, however deep."""
    stack: list[Union[dict[str, Any], list[Any]]] = [doc]
    while stack:
        container = stack.pop()
        for value in container.values() if type(container) is dict else container:
            kind = type(value)
            if kind is float:
                return True
            if kind is dict or kind is list:
                stack.append(value)
    return False


def _plain_object(raw: bytes) -> Optional[dict[str, Any]]:
    """orjson's reading of ``raw`` where it is certainly the standard decoder's: a JSON object
    with no float in it. Else None, and the standard decoder reads the message as before.

    Why: decoding and the content hash's canonical JSON were a third of parsing an event, and
    orjson does each in about a third of the time. Where the two decoders differ, this takes the
    standard path: orjson reads an integer past 64 bits as a float (a float is never accepted
    here) and refuses what the standard decoder accepts or names otherwise (lone surrogate
    escapes, nesting past 1,024 levels, NaN, bytes that are not UTF-8). So every outcome, reason
    and detail stays the standard decoder's; transforms/parse_test.py compares the two paths on
    hostile and generated messages."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return doc if type(doc) is dict and not _holds_float(doc) else None


def _too_deep(doc: dict[str, Any], limit: int) -> bool:
    """Whether objects and lists nest deeper than ``limit`` levels (the top-level object is
    level 1); stops at the first container past the limit. Only containers are pushed, so every
    value popped is a dict or a list."""
    stack: list[tuple[Union[dict[str, Any], list[Any]], int]] = [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > limit:
            return True
        children = value.values() if isinstance(value, dict) else value
        stack.extend((v, depth + 1) for v in children if isinstance(v, (dict, list)))
    return False


def parse_timestamp_us(text: str) -> int:
    """RFC 3339 with a mandatory offset -> epoch microseconds (sub-microsecond digits dropped).

    Python 3.11+ (the supported floor) reads any number of fraction digits and drops those past
    the microsecond itself: .9999999 is .999999, never rounded up into the next second."""
    if not RFC3339.match(text):
        raise ValueError(f"occurred_at {text[:64]!r} is not RFC 3339 with an offset")
    parsed = datetime.fromisoformat(text.replace("z", "Z").replace("t", "T"))
    delta = parsed - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def dead_letter(source: SourceRef, raw: Optional[bytes], reason: str, detail: str) -> dict[str, Any]:
    return {
        "topic": source.topic,
        "partition": source.partition,
        "offset": source.offset,
        "kafka_ts_ms": source.kafka_ts_ms,
        "raw": raw if raw is not None else b"",
        "reason": reason,
        "detail": detail[:500],
    }


ParseOutcome = tuple[str, dict[str, Any]]  # ("event", row) | ("dead", row)


def parse_record(
    raw: Optional[bytes],
    source: SourceRef,
    stream: Optional[str],
    now_us: int,
    limits: ParseLimits = ParseLimits(),
) -> ParseOutcome:
    """Classifies one record. ``stream`` is tickets/chats/surveys for the record's topic."""
    doc, text_or_reason, at_us_or_detail = _check(raw, source.topic, stream, now_us, limits)
    if doc is None:
        return ("dead", dead_letter(source, raw, text_or_reason, at_us_or_detail))
    return ("event", _event_row(doc, text_or_reason, at_us_or_detail, source.topic, source.partition,
                                source.offset, source.kafka_ts_ms))


# What _check found: (the decoded message, its text, occurred_at in epoch µs) for a valid event,
# (None, reason, detail) for a dead letter. A plain tuple: parse_chunk runs this per record.
Checked = tuple[Optional[dict[str, Any]], str, Any]


def _check(
    raw: Optional[bytes], topic: str, stream: Optional[str], now_us: int, limits: ParseLimits
) -> Checked:
    if stream is None:
        return (None, UNKNOWN_TOPIC, f"topic {topic!r} is not one of the configured event topics")
    if raw is None or len(raw) == 0:
        return (None, EMPTY_MESSAGE, "message has no value")
    if len(raw) > limits.max_message_bytes:
        return (None, TOO_LARGE, f"{len(raw)} bytes > limit {limits.max_message_bytes}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return (None, NOT_UTF8, str(exc))
    doc = _plain_object(raw)
    if doc is None:
        try:
            doc = _DECODER.decode(text)
        except RecursionError:
            return (None, TOO_DEEP, "JSON nesting too deep to parse")
        except ValueError as exc:
            return (None, NOT_JSON, str(exc))
    if not isinstance(doc, dict):
        return (None, NOT_OBJECT, f"top-level JSON is {type(doc).__name__}, expected object")
    # Each level needs its own opening bracket, so a message with at most max_depth of them
    # cannot be too deep: most events skip the walk (which would add ~8% to parsing one).
    if text.count("{") + text.count("[") > limits.max_depth and _too_deep(doc, limits.max_depth):
        return (None, TOO_DEEP, f"nesting deeper than {limits.max_depth}")
    version = doc.get("schema_version")
    if type(version) is not int or version not in SUPPORTED_VERSIONS:
        return (None, UNKNOWN_SCHEMA_VERSION, f"schema_version {version!r} not in {list(SUPPORTED_VERSIONS)}")
    event_type = doc.get("event_type")
    checks = validators(version)
    if not isinstance(event_type, str) or event_type not in checks:
        return (None, UNKNOWN_EVENT_TYPE, f"event_type {str(event_type)[:80]!r} is not defined in contract v{version}")
    if STREAM_OF_TYPE[event_type] != stream:
        return (None, UNKNOWN_EVENT_TYPE, f"event_type {event_type!r} does not belong on topic {topic!r}")
    try:
        checks[event_type](doc)
    except fastjsonschema.JsonSchemaException as exc:
        return (None, SCHEMA_VIOLATION, exc.message)
    try:
        at_us = parse_timestamp_us(doc["occurred_at"])
    except (ValueError, OverflowError) as exc:
        return (None, BAD_TIMESTAMP, str(exc))
    if at_us < limits.min_occurred_at_us or at_us > now_us + limits.max_future_skew_s * 1_000_000:
        return (None, TIMESTAMP_OUT_OF_RANGE, f"occurred_at {doc['occurred_at']} outside the accepted range")
    if "\\u" in text and _has_lone_surrogate(doc):
        return (None, NOT_UTF8, "a string holds a lone surrogate (\\uD800-\\uDFFF escape): not valid Unicode text")
    return (doc, text, at_us)


INT32 = (-(2**31), 2**31 - 1)


def _as_int(value: Any) -> Optional[int]:
    """An integral score that fits the column, else None (schemas check surveys' scores)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        return None
    number = int(value)
    return number if INT32[0] <= number <= INT32[1] else None


def _has_lone_surrogate(doc: Any) -> bool:
    """JSON escapes can spell half a surrogate pair, which no UTF-8 column or JSON cast accepts."""
    try:
        json.dumps(doc, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _text_or_none(value: Any) -> Optional[str]:
    return value if type(value) is str else None  # JSON decoding makes no str subclasses


# The fields of an event row, in the order _event_values gives them (the events schema of
# transforms/batch_files.py, less the content hash appended after them).
EVENT_ROW_FIELDS = (
    "event_id", "event_type", "at_us", "customer_id", "occurred_at_text", *EXTRACTED_FIELDS, "csat", "nps",
    "payload", "topic", "partition", "offset", "kafka_ts_ms",
)


def _event_values(doc: dict[str, Any], text: str, at_us: int, topic: str, partition: int, offset: int,
                  kafka_ts_ms: Optional[int]) -> tuple[Any, ...]:
    """The event's values in EVENT_ROW_FIELDS order: the contract fields journey logic reads
    (strings or None), the scores of surveys, the payload as sent and the source. Spelled out
    field by field: this runs once per event, and a tuple (columns are made of many at once,
    parse_chunk_values) costs a third of a dict."""
    get = doc.get
    scored = doc["event_type"] == "survey.responded"  # elsewhere csat/nps are unknown extra fields
    return (
        doc["event_id"], doc["event_type"], at_us, doc["customer_id"], doc["occurred_at"],
        _text_or_none(get("ticket_id")), _text_or_none(get("chat_id")), _text_or_none(get("survey_id")),
        _text_or_none(get("channel")), _text_or_none(get("handler_type")), _text_or_none(get("agent_id")),
        _text_or_none(get("team")), _text_or_none(get("status")), _text_or_none(get("author")),
        _text_or_none(get("outcome")),
        _as_int(get("csat")) if scored else None,
        _as_int(get("nps")) if scored else None,
        text, topic, partition, offset, kafka_ts_ms,
    )


def _event_row(doc: dict[str, Any], text: str, at_us: int, topic: str, partition: int, offset: int,
               kafka_ts_ms: Optional[int]) -> dict[str, Any]:
    """The event's row: _event_values by field name."""
    return dict(zip(EVENT_ROW_FIELDS, _event_values(doc, text, at_us, topic, partition, offset, kafka_ts_ms)))


# The content hash's canonical JSON (transforms.dedup.canonical_content), with one encoder for
# every record: json.dumps with these arguments builds the same encoder anew per call.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def content_hash_of(doc: dict[str, Any]) -> str:
    """transforms.dedup.content_hash of a message this parser accepted, without decoding it a
    second time: json.loads(payload) gives an equal object (the same decoder, and an accepted
    message holds no NaN or Infinity, the one place the two decoders differ; validation adds
    nothing to it), and the encoder has json.dumps's arguments, so the bytes hashed are the same.
    transforms/parse_test.py checks the equality on hostile and generated messages.

    Without a float in it, orjson's sorted compact JSON is the same bytes (it escapes the same
    characters the same way and sorts keys by code point; checked for every code point), three
    times as fast. Floats are written differently (1e+16 against 1e16), and an integer past 64
    bits is refused: those messages take the standard encoder."""
    if not _holds_float(doc):
        try:
            return hashlib.sha256(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)).hexdigest()
        except orjson.JSONEncodeError:  # an integer past 64 bits (the standard decoder read it)
            pass
    return hashlib.sha256(_CANONICAL.encode(doc).encode("utf-8")).hexdigest()


# One Kafka record as the readers hand it over: (topic, partition, offset, timestamp ms, value bytes).
RawRecord = tuple[str, int, int, Optional[int], Optional[bytes]]


def parse_chunk(
    records: Iterable[RawRecord],
    stream_of_topic: dict[str, str],
    now_us: int,
    limits: ParseLimits = ParseLimits(),
    content_hashes: bool = False,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(event rows, dead letters) for (topic, partition, offset, kafka_ts_ms, value) records:
    each record's outcome is parse_record's. With ``content_hashes`` every event row also gets
    its ``content_hash`` (transforms.dedup), computed from the message decoded here. The rows
    are parse_chunk_values's tuples by field name."""
    values, dead = parse_chunk_values(records, stream_of_topic, now_us, limits)
    fields = (*EVENT_ROW_FIELDS, "content_hash") if content_hashes else EVENT_ROW_FIELDS
    return [dict(zip(fields, event)) for event in values], dead


def parse_chunk_values(
    records: Iterable[RawRecord],
    stream_of_topic: dict[str, str],
    now_us: int,
    limits: ParseLimits = ParseLimits(),
) -> tuple[list[tuple[Any, ...]], list[dict[str, Any]]]:
    """parse_chunk with content hashes, each event as a tuple of its values (EVENT_ROW_FIELDS,
    then ``content_hash``) instead of a dict: the ingest turns a chunk's tuples into columns at
    once (transforms/batch_files.py, ``values_table``). Outcomes and dead letters are
    parse_chunk's (transforms/parse_test.py checks the two against each other)."""
    events: list[tuple[Any, ...]] = []
    dead: list[dict[str, Any]] = []
    get_stream = stream_of_topic.get
    for topic, partition, offset, ts_ms, value in records:
        doc, text_or_reason, at_us_or_detail = _check(value, topic, get_stream(topic), now_us, limits)
        if doc is None:
            dead.append(dead_letter(SourceRef(topic, partition, offset, ts_ms), value, text_or_reason, at_us_or_detail))
            continue
        events.append((*_event_values(doc, text_or_reason, at_us_or_detail, topic, partition, offset, ts_ms),
                       content_hash_of(doc)))
    return events, dead
