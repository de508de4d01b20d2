"""Unbounded Kafka read for the streaming job: a splittable DoFn over kafka-python.

Why a Python splittable DoFn: Beam's `ReadFromKafka` is a cross-language transform that needs
Java and an expansion service jar fetched from Maven at pipeline construction; this reader needs
only kafka-python, so it runs on every runner the Python SDK runs on (docs/streaming.md, "Reading
Kafka", says how to swap in `ReadFromKafka` where Java and its jars are at hand).

* One element (and so one restriction) per topic-partition: `PartitionSpec(topic, partition,
  start, stop)`. The restriction is an `OffsetRange` tracked by Beam's `OffsetRestrictionTracker`:
  every record's offset is claimed before it is emitted, so a runner can checkpoint (defer the
  rest of the range) or split between two records, and resumes exactly at the next unclaimed
  offset after a failure. `stop` is `UNBOUNDED_STOP` for a streaming job, or the end offset seen
  at start for the bounded mode (`--stop-at-end`).
* Each emitted element is `SourceRecord` = (topic, partition, offset, kafka_ts_ms, value,
  watermark_ms): the watermark the partition had when the record was read travels with it, so
  the per-customer stage can tell a record that comes after its customer's state was cleaned up
  (docs/streaming.md, "Per customer: state, timers, late data").
* Timestamps and watermark (`TimestampPolicy`): `record` (default) stamps each element with the
  Kafka record timestamp; `event` with the event's `occurred_at` (records whose time cannot be
  read keep the record timestamp; they become dead letters later). The watermark of a partition
  is the largest timestamp read minus `max_out_of_orderness`, never moving back.
* Idle partitions: a partition that has been read to its end offset and stayed without new
  records for `idle_after_s` moves its watermark to wall-clock time minus
  `max_out_of_orderness` (record time tracks wall-clock time), so one quiet partition does not
  hold back every customer's cleanup timer. An idle partition is re-polled every
  `poll_interval_s` (the DoFn defers the rest of its range: a runner checkpoint).
"""
from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import apache_beam as beam
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.metrics import Metrics
from apache_beam.transforms.core import RestrictionProvider, WatermarkEstimatorProvider
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Duration, Timestamp

from pipelines.kafka.settings import FAST_CONSUMER_SETTINGS, KafkaSettings

log = logging.getLogger("cxj.stream.source")

UNBOUNDED_STOP = sys.maxsize
TIMESTAMP_POLICIES = ("record", "event")

# (topic, partition, offset, kafka timestamp ms, value, partition watermark ms when read)
SourceRecord = tuple[str, int, int, Optional[int], Optional[bytes], int]


@dataclass(frozen=True)
class PartitionSpec:
    """One topic-partition and the offsets to read from it: [start, stop)."""

    topic: str
    partition: int
    start: int
    stop: int = UNBOUNDED_STOP


@dataclass(frozen=True)
class SourceOptions:
    settings: KafkaSettings
    timestamp_policy: str = "record"
    max_out_of_orderness_s: float = 0.0
    idle_after_s: float = 5.0
    poll_interval_s: float = 0.5
    read_timeout_s: float = 60.0  # bounded mode: fail when a range makes no progress this long


def event_time_ms(value: Optional[bytes], fallback_ms: int) -> int:
    """The event's occurred_at in epoch ms for the `event` policy; the record time when unreadable."""
    from transforms.parse import parse_timestamp_us

    try:
        doc = json.loads(value or b"")
        return parse_timestamp_us(doc["occurred_at"]) // 1000
    except (ValueError, TypeError, KeyError, OverflowError, UnicodeDecodeError, AttributeError):
        return fallback_ms


class _PartitionRestrictions(RestrictionProvider):
    def initial_restriction(self, element: PartitionSpec) -> OffsetRange:
        return OffsetRange(element.start, element.stop)

    def create_tracker(self, restriction: OffsetRange) -> OffsetRestrictionTracker:
        return OffsetRestrictionTracker(restriction)

    def restriction_size(self, element: PartitionSpec, restriction: OffsetRange) -> int:
        # an unbounded range reports a large finite size (runners sum sizes for progress)
        return min(restriction.size(), 1 << 40)

    def truncate(self, element: PartitionSpec, restriction: OffsetRange) -> Optional[OffsetRange]:
        """On drain an unbounded partition stops where it is (nothing more is read)."""
        return None if restriction.stop == UNBOUNDED_STOP else restriction


class _WatermarkProvider(WatermarkEstimatorProvider):
    def initial_estimator_state(self, element: PartitionSpec, restriction: OffsetRange) -> Optional[Timestamp]:
        return None

    def create_watermark_estimator(self, state: Optional[Timestamp]) -> ManualWatermarkEstimator:
        return ManualWatermarkEstimator(state)


class _ReadPartition(beam.DoFn):
    """Reads one topic-partition's restriction; see the module docstring for the policies."""

    def __init__(self, options: SourceOptions) -> None:
        self.options = options
        self.read = Metrics.counter("cxj_stream", "records_read")
        self._consumers: dict[tuple[str, int], Any] = {}
        self._idle_since: dict[tuple[str, int], float] = {}

    def setup(self) -> None:
        self._consumers = {}
        self._idle_since = {}

    def teardown(self) -> None:
        for consumer in self._consumers.values():
            try:
                consumer.close()
            except Exception:  # closing a dead connection must not fail teardown
                pass
        self._consumers = {}

    def _consumer(self, spec: PartitionSpec) -> Any:
        from kafka import KafkaConsumer, TopicPartition

        key = (spec.topic, spec.partition)
        if key not in self._consumers:
            consumer = KafkaConsumer(
                **self.options.settings.client_kwargs(), **FAST_CONSUMER_SETTINGS,
                enable_auto_commit=False, group_id=None, check_crcs=False,
            )
            consumer.assign([TopicPartition(spec.topic, spec.partition)])
            self._consumers[key] = consumer
        return self._consumers[key]

    def _advance(self, estimator: ManualWatermarkEstimator, to_ms: float) -> None:
        target = Timestamp.of(max(0.0, to_ms / 1000.0))
        current = estimator.current_watermark()
        if current is None or target > current:
            estimator.set_watermark(target)

    def process(
        self,
        spec: PartitionSpec,
        tracker: OffsetRestrictionTracker = beam.DoFn.RestrictionParam(_PartitionRestrictions()),
        watermark: ManualWatermarkEstimator = beam.DoFn.WatermarkEstimatorParam(_WatermarkProvider()),
    ) -> Iterator[TimestampedValue]:
        from kafka import TopicPartition

        restriction = tracker.current_restriction()
        if restriction.start >= restriction.stop:
            return
        consumer = self._consumer(spec)
        tp = TopicPartition(spec.topic, spec.partition)
        consumer.seek(tp, restriction.start)
        lag_ms = self.options.max_out_of_orderness_s * 1000.0
        key = (spec.topic, spec.partition)
        deadline = time.monotonic() + self.options.read_timeout_s
        polls = 0
        last_claimed = restriction.start - 1
        while True:
            polled = consumer.poll(timeout_ms=int(self.options.poll_interval_s * 1000), max_records=5000).get(tp, [])
            polls += 1
            for record in polled:
                if record.offset < restriction.start or record.offset <= last_claimed:
                    continue
                if not tracker.try_claim(record.offset):
                    return  # the runner split or checkpointed the range here
                last_claimed = record.offset
                ts_ms = record.timestamp if record.timestamp is not None and record.timestamp >= 0 else int(time.time() * 1000)
                if self.options.timestamp_policy == "event":
                    ts_ms = event_time_ms(record.value, ts_ms)
                current = watermark.current_watermark()
                wm_ms = int(current.micros // 1000) if current is not None else 0
                self.read.inc()
                yield TimestampedValue(
                    (record.topic, record.partition, record.offset, record.timestamp, record.value, wm_ms),
                    Timestamp.of(ts_ms / 1000.0))
                self._advance(watermark, ts_ms - lag_ms)
            if polled:
                self._idle_since.pop(key, None)
                deadline = time.monotonic() + self.options.read_timeout_s
                if restriction.stop != UNBOUNDED_STOP and polls % 4 == 0:
                    # bounded mode: checkpoint now and then so the runner can commit progress
                    tracker.defer_remainder()
                    return
                continue
            position = consumer.position(tp)
            if restriction.stop != UNBOUNDED_STOP:
                if position >= restriction.stop:
                    # offsets without records (transaction markers) up to the stop: claim them
                    if last_claimed < restriction.stop - 1:
                        tracker.try_claim(restriction.stop - 1)
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"reading {spec.topic}[{spec.partition}] stalled for "
                                       f"{self.options.read_timeout_s:.0f}s at offset {position}")
                continue
            # unbounded and caught up: idle-partition policy, then hand the rest back to the runner
            idle_since = self._idle_since.setdefault(key, time.monotonic())
            if time.monotonic() - idle_since >= self.options.idle_after_s:
                self._advance(watermark, time.time() * 1000.0 - lag_ms)
            tracker.defer_remainder(Duration.of(self.options.poll_interval_s))
            return


class _ReadPartitionBounded(_ReadPartition):
    pass


class _ReadPartitionUnbounded(_ReadPartition):
    @beam.DoFn.unbounded_per_element()
    def process(self, spec, tracker=beam.DoFn.RestrictionParam(_PartitionRestrictions()),  # type: ignore[override]
                watermark=beam.DoFn.WatermarkEstimatorParam(_WatermarkProvider())):
        yield from super().process(spec, tracker, watermark)


class ReadKafkaPartitions(beam.PTransform):
    """Partition specs (planned by the driver) in, `SourceRecord`s with timestamps out."""

    def __init__(self, specs: list[PartitionSpec], options: SourceOptions) -> None:
        super().__init__()
        if options.timestamp_policy not in TIMESTAMP_POLICIES:
            raise ValueError(f"timestamp policy {options.timestamp_policy!r} is not one of {TIMESTAMP_POLICIES}")
        self.specs = specs
        self.options = options

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        bounded = all(s.stop != UNBOUNDED_STOP for s in self.specs)
        reader = _ReadPartitionBounded(self.options) if bounded else _ReadPartitionUnbounded(self.options)
        return (pbegin
                | "Partitions" >> beam.Create(self.specs)
                | "ReadPartition" >> beam.ParDo(reader))


def plan_partitions(settings: KafkaSettings, topics: list[str], start: str | dict[tuple[str, int], int],
                    stop_at_end: bool, timeout_s: float = 30.0) -> list[PartitionSpec]:
    """One spec per partition of ``topics``: start at `earliest`, `latest`, or given offsets
    (missing partitions start at the earliest), stop at the end offsets seen now when
    ``stop_at_end`` (the bounded mode), else never.

    Bounds come from the local engine's OffsetReader, which confirms end offsets by fetching:
    some brokers (the local Tansu) report the last batch's base offset as the end."""
    from pipelines.kafka.offsets import OffsetReader

    reader = OffsetReader(settings, timeout_s)
    try:
        partitions, missing = reader.partitions(topics)
        if missing:
            raise ValueError(f"topic {missing[0]} does not exist on {settings.bootstrap_servers}")
        earliest, end = reader.bounds(partitions)
    finally:
        reader.close()
    specs = []
    for key in partitions:
        if start == "latest":
            first = end[key]
        elif isinstance(start, dict):
            first = max(earliest[key], min(start.get(key, earliest[key]), end[key]))
        else:
            first = earliest[key]
        specs.append(PartitionSpec(key[0], key[1], first, end[key] if stop_at_end else UNBOUNDED_STOP))
    return specs
