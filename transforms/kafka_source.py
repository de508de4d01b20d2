"""Reading fixed Kafka offset ranges inside a bounded Beam pipeline.

Each micro-batch is a bounded pipeline over [from, to) offset ranges planned by the driver,
so a batch always reads exactly what the driver will record as landed (DESIGN decisions 1, 3).
On a cluster the same ranges can be read by ReadFromKafka; this DoFn needs only kafka-python.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterator

import apache_beam as beam
from apache_beam.metrics import Metrics

from pipelines.kafka_config import FAST_CONSUMER_SETTINGS, KafkaSettings


@dataclass(frozen=True)
class OffsetRange:
    topic: str
    partition: int
    start: int  # first offset to read
    stop: int  # first offset not to read

    @property
    def size(self) -> int:
        return max(0, self.stop - self.start)


class KafkaReadTimeout(RuntimeError):
    """The broker stopped answering before the planned range was read."""


class _ReadOffsetRange(beam.DoFn):
    def __init__(self, settings: KafkaSettings, timeout_s: float) -> None:
        self.settings = settings
        self.timeout_s = timeout_s
        self.records_read = Metrics.counter("cxj", "records_read")

    def process(self, offset_range: OffsetRange) -> Iterator[dict[str, Any]]:
        from kafka import KafkaConsumer, TopicPartition

        if offset_range.size == 0:
            return
        tp = TopicPartition(offset_range.topic, offset_range.partition)
        consumer = KafkaConsumer(
            **self.settings.client_kwargs(),
            **FAST_CONSUMER_SETTINGS,
            enable_auto_commit=False,
            group_id=None,
            check_crcs=False,  # pure-Python CRC32C costs ~20% of read time; TCP already checksums
        )
        try:
            consumer.assign([tp])
            consumer.seek(tp, offset_range.start)
            deadline = time.monotonic() + self.timeout_s
            position = offset_range.start
            while position < offset_range.stop:
                if time.monotonic() > deadline:
                    raise KafkaReadTimeout(
                        f"read {offset_range.topic}[{offset_range.partition}] stalled at offset "
                        f"{position} of [{offset_range.start}, {offset_range.stop}) for {self.timeout_s:.0f}s"
                    )
                polled = consumer.poll(timeout_ms=500, max_records=FAST_CONSUMER_SETTINGS["max_poll_records"])
                for record in polled.get(tp, []):
                    if record.offset >= offset_range.stop:
                        position = offset_range.stop
                        break
                    if record.offset < offset_range.start:
                        continue
                    position = record.offset + 1
                    self.records_read.inc()
                    yield {
                        "topic": record.topic,
                        "partition": record.partition,
                        "offset": record.offset,
                        "kafka_ts_ms": record.timestamp,
                        "value": record.value,
                    }
                if polled:
                    deadline = time.monotonic() + self.timeout_s
                else:
                    # compacted or transactional topics can have offset gaps at the end
                    position = max(position, consumer.position(tp))
        finally:
            consumer.close()


class ReadKafkaRanges(beam.PTransform):
    """Planned offset ranges in, raw Kafka records (as dicts) out."""

    def __init__(self, ranges: list[OffsetRange], settings: KafkaSettings, timeout_s: float = 30.0) -> None:
        super().__init__()
        self.ranges = [r for r in ranges if r.size > 0]
        self.settings = settings
        self.timeout_s = timeout_s

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        return (
            pbegin
            | "Ranges" >> beam.Create(self.ranges)
            | "SpreadRanges" >> beam.Reshuffle()
            | "ReadRange" >> beam.ParDo(_ReadOffsetRange(self.settings, self.timeout_s))
        )
