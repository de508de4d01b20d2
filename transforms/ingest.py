"""Parsing, validation and de-duplication as Beam composites.

The logic lives in transforms.parse and transforms.dedup (pure); these composites route each
outcome to its own output, tagged, and count them as Beam metrics so every runner reports the
same figures. They write nothing: the sinks at the end of the pipeline do
(transforms/batch_files.py). Elements are chunks of rows, so Beam's per-element overhead is
paid per thousands of events, not per event.

    records | ParseEvents  -> .events (chunks of rows), .dead_letters ((chunk key, rows))
    events  | DedupEvents  -> .winners ((bucket key, rows)), .losing_copies ((bucket key, rows))

Every record read leaves on exactly one of .winners, .losing_copies or .dead_letters, which is
what the landing step's accounting check counts on.
"""
from __future__ import annotations

from typing import Iterable, Iterator, Union

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput

from transforms.batch_files import COPY_SCHEMA, KeyedRows, Rows
from transforms.dedup import bucket_of, payload_hash, winning_copies
from transforms.parse import ParseLimits, RawRecord, parse_chunk

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
    """Parses a chunk of records: valid rows (with their content hash, which decides between
    conflicting copies) on the main output, dead letters on the ``dead_letters`` tag."""

    def __init__(self, stream_of_topic: dict[str, str], now_us: int, limits: ParseLimits) -> None:
        self.stream_of_topic = stream_of_topic
        self.now_us = now_us
        self.limits = limits
        self.parsed = Metrics.counter("cxj", "events_parsed")
        self.dead = Metrics.counter("cxj", "dead_letters")

    def process(self, records: list[RawRecord]) -> Iterator[Union[Rows, TaggedOutput]]:
        events, dead = parse_chunk(records, self.stream_of_topic, self.now_us, self.limits)
        for row in events:
            row["content_hash"] = payload_hash(row["payload"])
        self.parsed.inc(len(events))
        if dead:
            self.dead.inc(len(dead))
            for row in dead:
                Metrics.counter("cxj.dead_letter_reason", row["reason"]).inc()
            yield TaggedOutput(DEAD_LETTERS, (chunk_key(records), dead))
        if events:
            yield events


class ParseEvents(beam.PTransform):
    """Chunks of raw records -> ``.events``: chunks of valid event rows, and ``.dead_letters``:
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


def split_by_bucket(rows: Rows, buckets: int) -> Iterator[tuple[int, Rows]]:
    """A chunk's rows by event-id bucket: every copy of an event lands in the same bucket."""
    grouped: dict[int, Rows] = {}
    for row in rows:
        grouped.setdefault(bucket_of(row["event_id"], buckets), []).append(row)
    yield from grouped.items()


def bucket_key(bucket: int) -> str:
    return f"{bucket:04d}"


def losing_copy_rows(winners: Rows, losers: Rows) -> Rows:
    """The losing copies as staged: their own content and source, plus the batch winner's hash."""
    winner_hash = {row["event_id"]: row["content_hash"] for row in winners}
    return [{**{name: row[name] for name in COPY_SCHEMA.names if name in row},
             "winner_hash": winner_hash[row["event_id"]]} for row in losers]


class _KeepWinningCopy(beam.DoFn):
    """One bucket's copies -> one winner per event_id (smallest content hash, transforms.dedup)
    on the main output, every other copy on the ``losing_copies`` tag."""

    def __init__(self) -> None:
        self.duplicates = Metrics.counter("cxj", "duplicates_in_batch")

    def process(self, keyed: tuple[int, Iterable[Rows]]) -> Iterator[Union[KeyedRows, TaggedOutput]]:
        bucket, chunks = keyed
        winners, losers = winning_copies(row for chunk in chunks for row in chunk)
        yield (bucket_key(bucket), winners)
        if losers:
            self.duplicates.inc(len(losers))
            yield TaggedOutput(LOSING_COPIES, (bucket_key(bucket), losing_copy_rows(winners, losers)))


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

