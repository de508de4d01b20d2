"""Beam wrappers around parsing, validation and de-duplication.

The logic lives in transforms.parse and transforms.dedup (pure); these composites route
outcomes, stage them as files and count them as Beam metrics so every runner reports the
same figures. Elements are chunks of rows, so Beam's per-element overhead is paid per
thousands of events, not per event.
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator

import apache_beam as beam
from apache_beam.metrics import Metrics

from transforms.dedup import bucket_of, payload_hash, winning_copies
from transforms.parse import ParseLimits, RawRecord, parse_chunk
from transforms.batch_files import COPY_SCHEMA, DEAD_LETTER_SCHEMA, EVENT_SCHEMA, write_rows

Rows = list[dict[str, Any]]


class _ParseDoFn(beam.DoFn):
    """Parses a chunk; stages its dead letters at once (file named by the chunk's first
    record, so a retried bundle rewrites the same file) and passes valid rows on."""

    def __init__(self, stream_of_topic: dict[str, str], now_us: int, limits: ParseLimits, staging: str) -> None:
        self.stream_of_topic = stream_of_topic
        self.now_us = now_us
        self.limits = limits
        self.staging = staging
        self.parsed = Metrics.counter("cxj", "events_parsed")
        self.dead = Metrics.counter("cxj", "dead_letters")

    def process(self, records: list[RawRecord]) -> Iterator[Rows]:
        events, dead = parse_chunk(records, self.stream_of_topic, self.now_us, self.limits)
        for row in events:  # what decides between conflicting copies (transforms.dedup)
            row["content_hash"] = payload_hash(row["payload"])
        self.parsed.inc(len(events))
        if dead:
            topic, partition, offset = records[0][:3]
            write_rows(f"{self.staging}/dead-{topic}-{partition}-{offset}.parquet", dead, DEAD_LETTER_SCHEMA)
            self.dead.inc(len(dead))
            for row in dead:
                Metrics.counter("cxj.dead_letter_reason", row["reason"]).inc()
        if events:
            yield events


class ParseEvents(beam.PTransform):
    """Chunks of raw records -> chunks of valid event rows; dead letters are staged as files."""

    def __init__(self, stream_of_topic: dict[str, str], now_us: int, staging: str, limits: ParseLimits = ParseLimits()) -> None:
        super().__init__()
        self.stream_of_topic = stream_of_topic
        self.now_us = now_us
        self.staging = staging
        self.limits = limits

    def expand(self, records: beam.PCollection) -> beam.PCollection:
        return records | "ParseAndValidate" >> beam.ParDo(
            _ParseDoFn(self.stream_of_topic, self.now_us, self.limits, self.staging)
        )


def split_by_bucket(rows: Rows, buckets: int) -> Iterator[tuple[int, Rows]]:
    grouped: dict[int, Rows] = {}
    for row in rows:
        grouped.setdefault(bucket_of(row["event_id"], buckets), []).append(row)
    yield from grouped.items()


class _KeepWinningCopy(beam.DoFn):
    """Stages one winning copy per event_id (smallest content hash, transforms.dedup) and every
    losing copy with the winner's hash, so each record read is in exactly one staged file."""

    def __init__(self, staging: str) -> None:
        self.staging = staging
        self.duplicates = Metrics.counter("cxj", "duplicates_in_batch")

    def process(self, keyed: tuple[int, Iterable[Rows]]) -> Iterator[int]:
        bucket, chunks = keyed
        winners, losers = winning_copies(row for chunk in chunks for row in chunk)
        write_rows(f"{self.staging}/events-{bucket:04d}.parquet", winners, EVENT_SCHEMA)
        if losers:
            self.duplicates.inc(len(losers))
            winner_hash = {row["event_id"]: row["content_hash"] for row in winners}
            copies = [{**{name: row[name] for name in COPY_SCHEMA.names if name in row},
                       "winner_hash": winner_hash[row["event_id"]]} for row in losers]
            write_rows(f"{self.staging}/copies-{bucket:04d}.parquet", copies, COPY_SCHEMA)
        yield len(winners)


class DedupEvents(beam.PTransform):
    """One row per event_id within the batch, staged per bucket (copies of an event meet in
    one bucket), and the losing copies beside it. Copies of events landed in earlier batches
    are resolved at landing, where the store knows what has landed."""

    def __init__(self, staging: str, buckets: int = 16) -> None:
        super().__init__()
        self.staging = staging
        self.buckets = buckets

    def expand(self, chunks: beam.PCollection) -> beam.PCollection:
        return (
            chunks
            | "BucketByEventId" >> beam.FlatMap(split_by_bucket, self.buckets)
            | "GroupByBucket" >> beam.GroupByKey()
            | "KeepWinningCopy" >> beam.ParDo(_KeepWinningCopy(self.staging))
        )
