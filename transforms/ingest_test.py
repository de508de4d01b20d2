"""ParseEvents and DedupEvents on Beam's TestPipeline: what leaves on which output.

The runner is the engine's own in-process FnApiRunner (the DirectRunner would first try Prism).

No broker: records are built here as the reader hands them over (topic, partition, offset,
Kafka timestamp, value). Expected results are computed independently of the code under test
(reasons listed by hand, content hashes from hashlib), and every record must leave on exactly
one output.
"""
from __future__ import annotations

import hashlib
import json
import random
from typing import Any, Callable

import apache_beam as beam
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import BeamAssertException, assert_that, equal_to

from transforms.batch_files import EVENT_SCHEMA
from transforms.dedup import bucket_of
from transforms.ingest import DedupEvents, ParseEvents, bucket_key

NOW_US = 1_795_000_000_000_000  # 2026-11-18
STREAMS = {"cx.tickets": "tickets", "cx.chats": "chats", "cx.surveys": "surveys"}


def event(event_id: str = "e-1", **overrides: Any) -> dict[str, Any]:
    doc = {"event_id": event_id, "event_type": "ticket.created", "occurred_at": "2026-11-01T09:30:00Z",
           "customer_id": "cust-1", "schema_version": 1, "ticket_id": "T-1", "channel": "email"}
    doc.update(overrides)
    return {k: v for k, v in doc.items() if v is not ...}


def encoded(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def sha(doc: Any) -> str:
    """The content hash as the contract defines it: SHA-256 of the canonical JSON."""
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()).hexdigest()


# Hostile values and the reason each must be dead-lettered with (listed by hand).
HOSTILE: list[tuple[bytes | None, str]] = [
    (b"\xff\xfe\xfa", "not_utf8"),
    (b"{not json", "not_json"),
    (b'{"a": NaN}', "not_json"),
    (b"[1, 2]", "not_object"),
    (b"", "empty_message"),
    (None, "empty_message"),  # a tombstone
    (b"[" * 5000 + b"]" * 5000, "too_deep"),
    (b"x" * 2_000_000, "too_large"),
    (encoded(event(schema_version=2)), "unknown_schema_version"),
    (encoded(event(event_type="ticket.deleted")), "unknown_event_type"),
    (encoded(event(event_type="chat.started", chat_id="C-1")), "unknown_event_type"),  # wrong topic
    (encoded(event(channel="fax")), "schema_violation"),
    (encoded(event(ticket_id=...)), "schema_violation"),
    (encoded(event(occurred_at="yesterday")), "bad_timestamp"),
    (encoded(event(occurred_at="2099-01-01T00:00:00Z")), "timestamp_out_of_range"),
]


def records(values: list[bytes | None], topic: str = "cx.tickets", partition: int = 2, first: int = 40) -> list[tuple]:
    return [(topic, partition, first + i, 1_700_000_000_000 + i, value) for i, value in enumerate(values)]


def chunked(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def matches(check: Callable[[list], None]) -> Callable[[list], None]:
    """An assert_that matcher from a plain function that uses ``assert``."""

    def matcher(actual: list) -> None:
        try:
            check(list(actual))
        except AssertionError as exc:
            raise BeamAssertException(str(exc)) from None

    return matcher


def test_hostile_records_land_on_the_dead_letter_tag_with_their_reason():
    valid = [encoded(event(f"e-{i}", ticket_id=f"T-{i}")) for i in range(3)]
    values = [v for v, _ in HOSTILE] + valid
    rng = random.Random(11)
    rng.shuffle(values)
    expected_reason = {v: r for v, r in HOSTILE}
    source = records(values)
    dead_offsets = {offset: expected_reason[value] for _, _, offset, _, value in source if value not in valid}

    def dead_letters_are(actual: list) -> None:
        assert [key for key, _ in actual] == ["cx.tickets-2-40"], "one dead-letter element per chunk, keyed by its first record"
        rows = actual[0][1]
        assert {row["offset"]: row["reason"] for row in rows} == dead_offsets
        assert all(row["topic"] == "cx.tickets" and row["partition"] == 2 for row in rows)
        assert all(row["raw"] == (source[row["offset"] - 40][4] or b"") for row in rows), "raw bytes kept for replay"
        assert all(row["kafka_ts_ms"] == 1_700_000_000_000 + row["offset"] - 40 for row in rows)

    def events_are(actual: list) -> None:
        assert all(chunk.schema == EVENT_SCHEMA for chunk in actual), "a chunk's events leave as one table"
        rows = [row for chunk in actual for row in chunk.to_pylist()]
        assert sorted(row["event_id"] for row in rows) == ["e-0", "e-1", "e-2"]
        assert all(row["content_hash"] == sha(json.loads(row["payload"])) for row in rows)

    with TestPipeline(runner=FnApiRunner()) as p:
        parsed = p | beam.Create([source]) | ParseEvents(STREAMS, NOW_US)
        assert_that(parsed.dead_letters, matches(dead_letters_are), label="DeadLetters")
        assert_that(parsed.events, matches(events_are), label="Events")


def test_generated_garbage_is_dead_lettered_never_passed_on():
    """Random bytes and truncated valid messages: all on the dead-letter tag, none lost."""
    rng = random.Random(5)
    whole = encoded(event("e-9"))
    values = [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 60))) for _ in range(150)]
    values += [whole[:cut] for cut in range(len(whole) - 1)]  # every proper prefix of a valid message
    source = records(values, topic="cx.chats", partition=0, first=0)

    def all_dead(actual: list) -> None:
        rows = [row for _, chunk in actual for row in chunk]
        assert sorted(row["offset"] for row in rows) == list(range(len(values)))
        assert {row["reason"] for row in rows} <= {"not_utf8", "not_json", "not_object", "empty_message"}

    with TestPipeline(runner=FnApiRunner()) as p:
        parsed = p | beam.Create(chunked(source, 50)) | ParseEvents(STREAMS, NOW_US)
        assert_that(parsed.dead_letters, matches(all_dead), label="DeadLetters")
        assert_that(parsed.events, equal_to([]), label="NoEvents")


def test_every_record_leaves_on_exactly_one_output_keyed_by_its_chunk():
    rng = random.Random(3)
    small_hostile = [value for value, _ in HOSTILE if value is None or len(value) < 1000]
    values = [encoded(event(f"e-{i}", ticket_id=f"T-{i}")) if rng.random() < 0.7 else rng.choice(small_hostile)
              for i in range(400)]
    source = records(values, first=1000)
    chunks = chunked(source, 64)

    def dead_keys_and_offsets(actual: list) -> None:
        for key, rows in actual:
            offsets = [row["offset"] for row in rows]
            first_of_chunk = (min(offsets) - 1000) // 64 * 64 + 1000
            assert key == f"cx.tickets-2-{first_of_chunk}", "a chunk's dead letters are keyed by its first record"

    def together(actual: list) -> None:
        offsets = sorted(o for o in actual)
        assert offsets == list(range(1000, 1400)), "every record exactly once over events and dead letters"

    with TestPipeline(runner=FnApiRunner()) as p:
        parsed = p | beam.Create(chunks) | ParseEvents(STREAMS, NOW_US)
        event_offsets = parsed.events | "EventOffsets" >> beam.FlatMap(lambda chunk: chunk.column("offset").to_pylist())
        dead_offsets = parsed.dead_letters | "DeadOffsets" >> beam.FlatMap(lambda kv: [r["offset"] for r in kv[1]])
        assert_that((event_offsets, dead_offsets) | beam.Flatten(), matches(together), label="AllOnce")
        assert_that(parsed.dead_letters, matches(dead_keys_and_offsets), label="DeadKeys")


def parsed_row(doc: dict[str, Any], topic: str, partition: int, offset: int) -> dict[str, Any]:
    """An event row as ParseEvents hands it to DedupEvents (only what dedup reads matters)."""
    payload = json.dumps(doc)
    return {"event_id": doc["event_id"], "payload": payload, "content_hash": sha(doc),
            "topic": topic, "partition": partition, "offset": offset, "kafka_ts_ms": offset}


def test_conflicting_copies_smallest_content_hash_wins_and_losers_name_it():
    copies = [event("e-1", note=f"version {n}") for n in range(5)]
    rows = [parsed_row(doc, "cx.tickets", n % 3, 100 + n) for n, doc in enumerate(copies)]
    rows.append(parsed_row(event("e-2"), "cx.tickets", 0, 7))
    smallest = min(sha(doc) for doc in copies)

    def winners_are(actual: list) -> None:
        by_id = {row["event_id"]: (key, row) for key, table in actual for row in table.to_pylist()}
        assert set(by_id) == {"e-1", "e-2"}
        key, winner = by_id["e-1"]
        assert winner["content_hash"] == smallest
        assert key == bucket_key(bucket_of("e-1", 16))

    def losers_are(actual: list) -> None:
        losers = [row for _, table in actual for row in table.to_pylist()]
        assert sorted(row["content_hash"] for row in losers) == sorted(sha(d) for d in copies if sha(d) != smallest)
        assert {row["winner_hash"] for row in losers} == {smallest}
        assert all(json.loads(row["payload"])["event_id"] == "e-1" for row in losers)

    with TestPipeline(runner=FnApiRunner()) as p:
        for n, order in enumerate((rows, rows[::-1], rows[2:] + rows[:2])):  # whatever the arrival order
            out = p | f"Create{n}" >> beam.Create(chunked(order, 2)) | f"Dedup{n}" >> DedupEvents()
            assert_that(out.winners, matches(winners_are), label=f"Winners{n}")
            assert_that(out.losing_copies, matches(losers_are), label=f"Losers{n}")


def test_plain_duplicates_keep_the_smallest_source_coordinates():
    doc = event("e-7")
    rows = [parsed_row(doc, "cx.tickets", p, o) for p, o in [(2, 5), (0, 9), (0, 3), (1, 1)]]

    with TestPipeline(runner=FnApiRunner()) as p:
        out = p | beam.Create(chunked(rows, 1)) | DedupEvents()
        coordinates = out.winners | "Where" >> beam.FlatMap(lambda kv: [(r["partition"], r["offset"]) for r in kv[1].to_pylist()])
        lost = out.losing_copies | "Lost" >> beam.FlatMap(
            lambda kv: [(r["partition"], r["offset"], r["winner_hash"]) for r in kv[1].to_pylist()])
        assert_that(coordinates, equal_to([(0, 3)]), label="Winner")
        assert_that(lost, equal_to([(2, 5, sha(doc)), (0, 9, sha(doc)), (1, 1, sha(doc))]), label="Losers")


def test_every_copy_leaves_once_over_many_buckets():
    rng = random.Random(9)
    rows = []
    for n in range(600):
        event_id = f"e-{rng.randrange(200)}"
        doc = event(event_id, note=rng.choice(["a", "b"]))
        rows.append(parsed_row(doc, "cx.tickets", rng.randrange(3), n))
    ids = {row["event_id"] for row in rows}

    def one_per_id_in_its_bucket(actual: list) -> None:
        winners = [(key, row) for key, table in actual for row in table.to_pylist()]
        assert sorted(row["event_id"] for _, row in winners) == sorted(ids)
        assert all(key == bucket_key(bucket_of(row["event_id"], 16)) for key, row in winners)
        assert len({key for key, _ in winners}) == len(actual), "one element per bucket"

    with TestPipeline(runner=FnApiRunner()) as p:
        out = p | beam.Create(chunked(rows, 97)) | DedupEvents()
        count_w = out.winners | "CountW" >> beam.Map(lambda kv: kv[1].num_rows)
        count_l = out.losing_copies | "CountL" >> beam.Map(lambda kv: kv[1].num_rows)
        total = (count_w, count_l) | beam.Flatten() | beam.CombineGlobally(sum)
        assert_that(total, equal_to([600]), label="AllCopies")
        assert_that(out.winners, matches(one_per_id_in_its_bucket), label="Winners")


def test_split_copies_is_the_dedup_rule_on_columns_in_its_order():
    """split_copies runs transforms.dedup.winning_copies on a bucket's table: the same winners in
    the same order, and every other copy as staged (COPY_SCHEMA: its own content and source plus
    the batch winner's hash), after the table went through the shuffle's byte form. Copies come
    with plain duplicates, conflicting contents and equal contents on other partitions."""
    from transforms.batch_files import COPY_SCHEMA, EVENT_SCHEMA, bytes_table, rows_table, table_bytes
    from transforms.dedup import winning_copies
    from transforms.ingest import split_copies

    rng = random.Random(21)
    rows = []
    for n in range(500):
        doc = event(f"e-{rng.randrange(120)}", note=rng.choice(["a", "b", "c"]))
        row = parsed_row(doc, rng.choice(["cx.tickets", "cx.chats"]), rng.randrange(3), n)
        rows.append({name: row.get(name) for name in EVENT_SCHEMA.names})
    winners, losers = split_copies(bytes_table(table_bytes(rows_table(rows, EVENT_SCHEMA))))
    expected_winners, expected_losers = winning_copies(rows)
    assert winners.schema == EVENT_SCHEMA and losers.schema == COPY_SCHEMA
    assert winners.to_pylist() == expected_winners
    hash_of = {row["event_id"]: row["content_hash"] for row in expected_winners}
    assert losers.to_pylist() == [{name: row[name] if name != "winner_hash" else hash_of[row["event_id"]]
                                   for name in COPY_SCHEMA.names} for row in expected_losers]
    assert winners.num_rows + losers.num_rows == 500 and winners.num_rows == len({r["event_id"] for r in rows})
    assert losers.num_rows > 0 and len({r["winner_hash"] for r in losers.to_pylist()}) > 1
    no_copies, none = split_copies(rows_table(expected_winners, EVENT_SCHEMA))
    assert no_copies.to_pylist() == expected_winners and none.num_rows == 0 and none.schema == COPY_SCHEMA
