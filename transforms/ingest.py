"""Beam wrappers around parsing, validation and de-duplication.

The logic lives in transforms.parse (pure); these composites only route outcomes and count
them as Beam metrics so every runner reports the same figures.
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput

from transforms.parse import ParseLimits, SourceRef, parse_record

DEAD = "dead"
EVENTS = "events"


class _ParseDoFn(beam.DoFn):
    def __init__(self, stream_of_topic: dict[str, str], now_us: int, limits: ParseLimits) -> None:
        self.stream_of_topic = stream_of_topic
        self.now_us = now_us
        self.limits = limits
        self.parsed = Metrics.counter("cxj", "events_parsed")
        self.dead = Metrics.counter("cxj", "dead_letters")

    def process(self, record: dict[str, Any]) -> Iterator[Any]:
        source = SourceRef(record["topic"], record["partition"], record["offset"], record["kafka_ts_ms"])
        kind, row = parse_record(
            record["value"], source, self.stream_of_topic.get(record["topic"]), self.now_us, self.limits
        )
        if kind == "event":
            self.parsed.inc()
            yield row
        else:
            self.dead.inc()
            Metrics.counter("cxj.dead_letter_reason", row["reason"]).inc()
            yield TaggedOutput(DEAD, row)


class ParseEvents(beam.PTransform):
    """Raw records -> (valid event rows, dead letters) as tagged outputs 'events' and 'dead'."""

    def __init__(self, stream_of_topic: dict[str, str], now_us: int, limits: ParseLimits = ParseLimits()) -> None:
        super().__init__()
        self.stream_of_topic = stream_of_topic
        self.now_us = now_us
        self.limits = limits

    def expand(self, records: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        return records | "ParseAndValidate" >> beam.ParDo(
            _ParseDoFn(self.stream_of_topic, self.now_us, self.limits)
        ).with_outputs(DEAD, main=EVENTS)


def first_delivery(rows: Iterable[dict[str, Any]]) -> tuple[dict[str, Any], int]:
    """The earliest-delivered copy of an event and how many re-deliveries it had."""
    ordered = sorted(rows, key=lambda r: (r["topic"], r["partition"], r["offset"]))
    return ordered[0], len(ordered) - 1


class _KeepFirst(beam.DoFn):
    def __init__(self) -> None:
        self.duplicates = Metrics.counter("cxj", "duplicates_in_batch")

    def process(self, keyed: tuple[str, Iterable[dict[str, Any]]]) -> Iterator[dict[str, Any]]:
        row, extra = first_delivery(keyed[1])
        if extra:
            self.duplicates.inc(extra)
        yield row


class DedupEvents(beam.PTransform):
    """One row per event_id within the batch; duplicates of already-landed events are
    removed at landing, where the store knows what has landed."""

    def expand(self, events: beam.PCollection) -> beam.PCollection:
        return (
            events
            | "KeyByEventId" >> beam.Map(lambda row: (row["event_id"], row))
            | "GroupByEventId" >> beam.GroupByKey()
            | "KeepFirstDelivery" >> beam.ParDo(_KeepFirst())
        )
