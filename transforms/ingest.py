"""Parsing, validation and de-duplication as Beam composites.

The logic lives in transforms.parse and transforms.dedup (pure); these composites route each
outcome to its own output, tagged, and count them as Beam metrics so every runner reports the
same figures. They write nothing: the sinks at the end of the pipeline do
(transforms/batch_files.py). Elements are chunks (of records, then one table per chunk), so
Beam's per-element overhead is paid per thousands of events, not per event.

    records | ParseEvents  -> .events (chunks as tables), .dead_letters ((chunk key, rows))
    events  | DedupEvents  -> .winners ((bucket key, table)), .losing_copies ((bucket key, table))

Events travel as Arrow tables (EVENT_SCHEMA, COPY_SCHEMA) from parsing on: a chunk's events
become columns at once, the shuffle that brings an event's copies together moves them as
tables, and the sinks write them unchanged.

Every record read leaves on exactly one of .winners, .losing_copies or .dead_letters, which is
what the landing step's accounting check counts on.
"""
from __future__ import annotations

from typing import Iterable, Iterator, Union

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput

from transforms.batch_files import (COPY_SCHEMA, EVENT_SCHEMA, KeyedRows, Rows, bytes_table, rows_table, table_bytes,
                                    values_table)
from transforms.dedup import bucket_of, winning_copies
from transforms.parse import ParseLimits, RawRecord, parse_chunk_values

# Output tags (attribute names of the composites' results)
EVENTS = "events"
DEAD_LETTERS = "dead_letters"
WINNERS = "winners"
LOSING_COPIES = "losing_copies"


def chunk_key(records: list[RawRecord]) -> str:
    """A chunk's file key: its first record's coordinates (the same when a bundle is retried)."""
    topic, partition, offset = records[0][:3]
    return f"{topic}-{partition}-{offset}"


class _ParseChunk(beam.DoFn):
    """Parses a chunk of records: its valid events as one table of EVENT_SCHEMA (with their
    content hash, which decides between conflicting copies) on the main output, dead letters
    (rows) on the ``dead_letters`` tag."""

    def __init__(self, stream_of_topic: dict[str, str], now_us: int, limits: ParseLimits) -> None:
        self.stream_of_topic = stream_of_topic
        self.now_us = now_us
        self.limits = limits
        self.parsed = Metrics.counter("cxj", "events_parsed")
        self.dead = Metrics.counter("cxj", "dead_letters")

    def process(self, records: list[RawRecord]) -> Iterator[Union[pa.Table, TaggedOutput]]:
        # the content hash from the message as the parser decoded it (no second decode)
        events, dead = parse_chunk_values(records, self.stream_of_topic, self.now_us, self.limits)
        self.parsed.inc(len(events))
        if dead:
            self.dead.inc(len(dead))
            for row in dead:
                Metrics.counter("cxj.dead_letter_reason", row["reason"]).inc()
            yield TaggedOutput(DEAD_LETTERS, (chunk_key(records), dead))
        if events:
            yield values_table(events, EVENT_SCHEMA)


class ParseEvents(beam.PTransform):
    """Chunks of raw records -> ``.events``: each chunk's valid events as a table of EVENT_SCHEMA, and ``.dead_letters``:
    ``(chunk key, dead-letter rows)``, each with its reason."""

    def __init__(self, stream_of_topic: dict[str, str], now_us: int, limits: ParseLimits = ParseLimits()) -> None:
        super().__init__()
        self.stream_of_topic = stream_of_topic
        self.now_us = now_us
        self.limits = limits

    def expand(self, records: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        return records | "ParseAndValidate" >> beam.ParDo(
            _ParseChunk(self.stream_of_topic, self.now_us, self.limits)
        ).with_outputs(DEAD_LETTERS, main=EVENTS)


def split_by_bucket(chunk: Union[pa.Table, Rows], buckets: int) -> Iterator[tuple[int, bytes]]:
    """A chunk's events (a table of EVENT_SCHEMA, or rows) by event-id bucket (every copy of an
    event lands in the same bucket), each bucket's rows in their order as a table in IPC bytes
    (``table_bytes``): the shuffle then copies one byte string per bucket instead of encoding and
    decoding every value of every row, which cost about half as much as parsing the event. The
    sink writes the table."""
    table = chunk if isinstance(chunk, pa.Table) else rows_table(chunk, EVENT_SCHEMA)
    bucket_ids = [bucket_of(event_id, buckets) for event_id in table.column("event_id").to_pylist()]
    keys = pa.array(bucket_ids, type=pa.int32())
    for bucket in sorted(set(bucket_ids)):
        yield bucket, table_bytes(table.take(pc.indices_nonzero(pc.equal(keys, bucket))))


def bucket_key(bucket: int) -> str:
    return f"{bucket:04d}"


# What the conflicting-copies rule (transforms.dedup.copy_order) reads of a copy.
_ORDER_COLUMNS = ("event_id", "content_hash", "topic", "partition", "offset")


def split_copies(table: pa.Table) -> tuple[pa.Table, pa.Table]:
    """(one winner per event_id, the losing copies as staged: COPY_SCHEMA, each naming the batch
    winner's hash) of a bucket's copies. The choice is transforms.dedup.winning_copies itself,
    run on the columns it reads, so rows come out in the order it gives."""
    columns = [table.column(name).to_pylist() for name in _ORDER_COLUMNS]
    keyed = [{"event_id": e, "content_hash": h, "topic": t, "partition": p, "offset": o, "index": i}
             for i, (e, h, t, p, o) in enumerate(zip(*columns))]
    winners, losers = winning_copies(keyed)
    winner_table = table.take(pa.array([row["index"] for row in winners], type=pa.int64()))
    winner_hash = {row["event_id"]: row["content_hash"] for row in winners}
    lost = table.take(pa.array([row["index"] for row in losers], type=pa.int64()))
    copies = {name: lost.column(name) for name in COPY_SCHEMA.names if name in lost.schema.names}
    copies["winner_hash"] = pa.array([winner_hash[row["event_id"]] for row in losers], type=pa.string())
    return winner_table, pa.table([copies[name] for name in COPY_SCHEMA.names], schema=COPY_SCHEMA)


class _KeepWinningCopy(beam.DoFn):
    """One bucket's copies -> one winner per event_id (smallest content hash, transforms.dedup)
    on the main output, every other copy on the ``losing_copies`` tag."""

    def __init__(self) -> None:
        self.duplicates = Metrics.counter("cxj", "duplicates_in_batch")

    def process(self, keyed: tuple[int, Iterable[bytes]]) -> Iterator[Union[KeyedRows, TaggedOutput]]:
        bucket, encoded = keyed
        winners, losers = split_copies(pa.concat_tables([bytes_table(data) for data in encoded]))
        yield (bucket_key(bucket), winners)
        if losers.num_rows:
            self.duplicates.inc(losers.num_rows)
            yield TaggedOutput(LOSING_COPIES, (bucket_key(bucket), losers))


class DedupEvents(beam.PTransform):
    """Chunks of event rows -> ``.winners``: one row per event_id within the batch, per bucket
    (copies of an event meet in one bucket), and ``.losing_copies``. Copies of events landed
    in earlier batches are resolved at landing, where the store knows what has landed."""

    def __init__(self, buckets: int = 16) -> None:
        super().__init__()
        self.buckets = buckets

    def expand(self, chunks: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        return (
            chunks
            | "BucketByEventId" >> beam.FlatMap(split_by_bucket, self.buckets)
            | "GroupByBucket" >> beam.GroupByKey()
            | "KeepWinningCopy" >> beam.ParDo(_KeepWinningCopy()).with_outputs(LOSING_COPIES, main=WINNERS)
        )

