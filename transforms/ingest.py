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

from transforms.dedup import bucket_of, first_deliveries
from transforms.kafka_source import RawRecord
from transforms.parse import ParseLimits, parse_chunk
from transforms.staging import DEAD_LETTER_SCHEMA, EVENT_SCHEMA, write_rows

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


class _KeepFirstDelivery(beam.DoFn):
    def __init__(self, staging: str) -> None:
        self.staging = staging
        self.duplicates = Metrics.counter("cxj", "duplicates_in_batch")

    def process(self, keyed: tuple[int, Iterable[Rows]]) -> Iterator[int]:
        bucket, chunks = keyed
        unique, dropped = first_deliveries(row for chunk in chunks for row in chunk)
        if dropped:
            self.duplicates.inc(dropped)
        write_rows(f"{self.staging}/events-{bucket:04d}.parquet", unique, EVENT_SCHEMA)
        yield len(unique)


class DedupEvents(beam.PTransform):
    """One row per event_id within the batch, staged per bucket (copies of an event meet in
    one bucket). Duplicates of events landed in earlier batches are removed at landing,
    where the store knows what has landed."""

    def __init__(self, staging: str, buckets: int = 16) -> None:
        super().__init__()
        self.staging = staging
        self.buckets = buckets

    def expand(self, chunks: beam.PCollection) -> beam.PCollection:
        return (
            chunks
            | "BucketByEventId" >> beam.FlatMap(split_by_bucket, self.buckets)
            | "GroupByBucket" >> beam.GroupByKey()
            | "KeepFirstDelivery" >> beam.ParDo(_KeepFirstDelivery(self.staging))
        )
