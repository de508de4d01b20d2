"""Reading fixed Kafka offset ranges inside a bounded Beam pipeline.

Each micro-batch is a bounded pipeline over [from, to) offset ranges planned by the driver,
so a batch always reads exactly what the driver will record as landed (docs/architecture.md, D1, D3).
Ranges are grouped into read tasks; one consumer per task fetches all its partitions at once
(consumer start-up costs ~0.15 s, which per partition would dominate small batches). On a
cluster, more tasks spread the reading over workers; ReadFromKafka is the alternative there.

    planned ranges | ReadKafkaRanges -> .records (chunks of raw records),
                                        .manifests ((task key, what each range really covered))

The composite writes nothing: a sink at the end of the pipeline writes the manifests
(transforms/batch_files.py ``WriteManifests``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Union

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput

from pipelines.kafka.settings import FAST_CONSUMER_SETTINGS, KafkaSettings
from transforms.batch_files import MANIFEST_FILES, batch_file_name
from transforms.parse import RawRecord

# Output tags (attribute names of ReadKafkaRanges' result)
RECORDS = "records"
MANIFESTS = "manifests"


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


def read_tasks(ranges: list[OffsetRange], tasks: int) -> list[list[OffsetRange]]:
    """Splits ranges into at most ``tasks`` groups of similar total size."""
    groups: list[list[OffsetRange]] = [[] for _ in range(max(1, min(tasks, len(ranges))))]
    sizes = [0] * len(groups)
    for r in sorted((r for r in ranges if r.size > 0), key=lambda r: -r.size):
        i = sizes.index(min(sizes))
        groups[i].append(r)
        sizes[i] += r.size
    return [g for g in groups if g]


@dataclass
class RangeRead:
    """What a read task really covered of one planned range: the read stage's manifest entry.

    ``stop`` is the first offset not read; it is below the planned stop when the task stopped
    at its byte budget. ``records`` counts the records handed on (offsets without a record,
    as in compacted topics, are covered but not counted).
    """

    topic: str
    partition: int
    start: int
    planned_stop: int
    stop: int
    records: int = 0
    first: Optional[int] = None
    last: Optional[int] = None

    def to_json(self) -> dict:
        return {"topic": self.topic, "partition": self.partition, "start": self.start, "planned_stop": self.planned_stop,
                "stop": self.stop, "records": self.records, "first": self.first, "last": self.last}


def manifest_key(task: list[OffsetRange]) -> str:
    """A read task's manifest key: its first range (a retried bundle rewrites the same file)."""
    first = min(task, key=lambda r: (r.topic, r.partition))
    return f"{first.topic}-{first.partition}-{first.start}"


def manifest_name(task: list[OffsetRange]) -> str:
    """A read task's manifest file name."""
    return batch_file_name(MANIFEST_FILES, manifest_key(task), "json")


def read_range_chunks(
    settings: KafkaSettings,
    task: list[OffsetRange],
    timeout_s: float,
    chunk_records: int = 5000,
    budget_bytes: Optional[int] = None,
    chunk_bytes: int = 8 * 1024 * 1024,
    report: Optional[dict[tuple[str, int], RangeRead]] = None,
) -> Iterator[list[RawRecord]]:
    """Chunks of the task's records; fills ``report`` with what was really covered per range.

    Reading stops early once the values read reach ``budget_bytes`` (always after at least
    one record, so every batch makes progress): a batch's memory is bounded by bytes as well
    as by records, and the report says where each range stopped.
    """
    from kafka import KafkaConsumer, TopicPartition

    covered = report if report is not None else {}
    for r in task:
        covered[(r.topic, r.partition)] = RangeRead(r.topic, r.partition, r.start, r.stop, r.start)
    stops = {TopicPartition(r.topic, r.partition): r.stop for r in task}
    positions = {TopicPartition(r.topic, r.partition): r.start for r in task}
    fetch = dict(FAST_CONSUMER_SETTINGS)
    if budget_bytes is not None:  # fetched-ahead records count against memory too
        fetch["fetch_max_bytes"] = max(1024 * 1024, min(fetch["fetch_max_bytes"], budget_bytes))
        fetch["max_partition_fetch_bytes"] = max(1024 * 1024, min(fetch["max_partition_fetch_bytes"], budget_bytes // 2))
    consumer = KafkaConsumer(
        **settings.client_kwargs(),
        **fetch,
        enable_auto_commit=False,
        group_id=None,
        check_crcs=False,  # pure-Python CRC32C costs ~20% of read time; TCP already checksums
        bootstrap_timeout_ms=int(timeout_s * 1000),  # --read-timeout bounds connecting too
    )
    try:
        consumer.assign(list(stops))
        for tp, start in positions.items():
            consumer.seek(tp, start)
        deadline = time.monotonic() + timeout_s
        chunk: list[RawRecord] = []
        chunk_size = 0
        read_bytes = 0
        pending = {tp for tp in stops if positions[tp] < stops[tp]}
        while pending:
            if time.monotonic() > deadline:
                stalled = ", ".join(f"{tp.topic}[{tp.partition}]@{positions[tp]}" for tp in sorted(pending))
                raise KafkaReadTimeout(f"reading stalled for {timeout_s:.0f}s at {stalled}")
            polled = consumer.poll(timeout_ms=500, max_records=FAST_CONSUMER_SETTINGS["max_poll_records"])
            over_budget = False
            for tp, records in polled.items():
                stop = stops[tp]
                entry = covered[(tp.topic, tp.partition)]
                for record in records:
                    if record.offset >= stop or over_budget:
                        break
                    size = len(record.value) if record.value is not None else 0
                    chunk.append((record.topic, record.partition, record.offset, record.timestamp, record.value))
                    chunk_size += size
                    read_bytes += size
                    entry.records += 1
                    entry.first = record.offset if entry.first is None else entry.first
                    entry.last = record.offset
                    positions[tp] = record.offset + 1
                    over_budget = budget_bytes is not None and read_bytes >= budget_bytes
                if records and not over_budget:
                    positions[tp] = max(positions[tp], min(records[-1].offset + 1, stop))
            if over_budget:
                pending.clear()
            elif polled:
                deadline = time.monotonic() + timeout_s
            else:  # compacted or transactional topics can end in offsets with no record
                for tp in pending:
                    positions[tp] = max(positions[tp], min(consumer.position(tp), stops[tp]))
            for tp in list(pending):
                if positions[tp] >= stops[tp]:
                    pending.discard(tp)
                    consumer.pause(tp)
            for tp, position in positions.items():
                covered[(tp.topic, tp.partition)].stop = position
            if chunk and (len(chunk) >= chunk_records or chunk_size >= chunk_bytes or not pending):
                yield chunk
                chunk = []
                chunk_size = 0
    finally:
        consumer.close()


# How a read task's records are fetched: read_range_chunks's signature. The composite's tests
# pass a reader over an in-memory log to check its routing without a broker.
RangeReader = Callable[..., Iterator[list[RawRecord]]]


class _ReadRanges(beam.DoFn):
    """Emits chunks of records, not single records: Beam's per-element cost would otherwise
    dominate a pipeline whose per-record work is a few microseconds. When the task is done it
    emits its manifest on the ``manifests`` tag (per range: where it started and stopped, how
    many records, first and last offset), which the driver checks against the batch's files
    before anything lands."""

    def __init__(self, settings: KafkaSettings, timeout_s: float, chunk_records: int,
                 budget_bytes: Optional[int], reader: RangeReader) -> None:
        self.settings = settings
        self.timeout_s = timeout_s
        self.chunk_records = chunk_records
        self.budget_bytes = budget_bytes
        self.reader = reader
        self.records_read = Metrics.counter("cxj", "records_read")

    def process(self, task: list[OffsetRange]) -> Iterator[Union[list[RawRecord], TaggedOutput]]:
        report: dict[tuple[str, int], RangeRead] = {}
        for chunk in self.reader(self.settings, task, self.timeout_s, self.chunk_records,
                                 self.budget_bytes, report=report):
            self.records_read.inc(len(chunk))
            yield chunk
        yield TaggedOutput(MANIFESTS, (manifest_key(task), [e.to_json() for e in report.values()]))


class ReadKafkaRanges(beam.PTransform):
    """Planned offset ranges -> ``.records``: chunks of raw records, and ``.manifests``: one
    ``(task key, entries)`` per read task saying what it really covered of each range."""

    def __init__(
        self,
        ranges: list[OffsetRange],
        settings: KafkaSettings,
        timeout_s: float = 30.0,
        chunk_records: int = 5000,
        tasks: int = 1,
        budget_bytes: Optional[int] = None,
        reader: RangeReader = read_range_chunks,
    ) -> None:
        super().__init__()
        self.tasks = read_tasks(ranges, tasks)
        self.settings = settings
        self.timeout_s = timeout_s
        self.chunk_records = chunk_records
        self.reader = reader
        # the batch's byte budget is shared by its read tasks
        self.budget_bytes = None if budget_bytes is None else max(1, budget_bytes // max(1, len(self.tasks)))

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.pvalue.DoOutputsTuple:
        return (
            pbegin
            | "ReadTasks" >> beam.Create(self.tasks)
            | "ReadRanges" >> beam.ParDo(
                _ReadRanges(self.settings, self.timeout_s, self.chunk_records, self.budget_bytes, self.reader)
            ).with_outputs(MANIFESTS, main=RECORDS)
        )
