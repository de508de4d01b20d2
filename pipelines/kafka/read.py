"""Reading fixed Kafka offset ranges inside a bounded Beam pipeline.

Each micro-batch is a bounded pipeline over [from, to) offset ranges planned by the driver,
so a batch always reads exactly what the driver will record as landed (docs/architecture.md, D1, D3).
Ranges are grouped into read tasks; one consumer per task fetches all its partitions at once
(a consumer per partition would multiply connections and fetches for small batches). The
consumer is librdkafka's (confluent-kafka): it decodes record batches in C. On a
cluster, more tasks spread the reading over workers; ReadFromKafka is the alternative there.

    planned ranges | ReadKafkaRanges -> .records (chunks of raw records),
                                        .manifests ((task key, what each range really covered))

The composite writes nothing: a sink at the end of the pipeline writes the manifests
(transforms/batch_files.py ``WriteManifests``).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Union

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput

from pipelines.kafka.settings import FAST_CONSUMER_SETTINGS, KafkaSettings
from transforms.batch_files import MANIFEST_FILES, batch_file_name
from transforms.parse import RawRecord


class _ClientLog(logging.LoggerAdapter):
    """librdkafka's own log lines, at DEBUG: it retries a lost connection by itself and logs every
    attempt as an error, while the reader's deadline decides when the broker has failed and the
    run then says so once (--verbose shows these lines)."""

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        self.logger.log(logging.DEBUG, msg, *args, **kwargs)


_CLIENT_LOG = _ClientLog(logging.getLogger("cxj.kafka.reader"), {})

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


# Records one consume() call may return; librdkafka has usually fetched them already.
CONSUME_MESSAGES = 10_000

# How long librdkafka puts off the next fetch once its local queue holds queued.min.messages
# (its default, 1 s, is meant for a consumer that keeps up with its log). A backlog's batch fills
# that queue with its own records and those past its stops; a partition not fetched yet then sat
# out the whole second with both cores idle (0.43 s of a 202k-event run's first batch). Fetching
# resumes soon after poll() has drained the queue (docs/performance.md, "The range reader's fetch
# backoff").
FETCH_QUEUE_BACKOFF_MS = 10


def range_reader_config(settings: KafkaSettings, budget_bytes: Optional[int]) -> dict[str, Any]:
    """librdkafka's configuration for reading planned ranges: the fetch sizes of D6, bounded by the
    batch's byte budget (records fetched ahead count against memory too); no group is joined and
    nothing is committed (the ranges are assigned, the store keeps the offsets); a start offset the
    broker does not hold is never answered by a silent jump to the log's end (librdkafka's default),
    which would mark the range read without its records; transactional records
    are read as kafka-python reads them (read_uncommitted), so the ranges planned with kafka-python's
    end offsets are covered."""
    fetch_max = FAST_CONSUMER_SETTINGS["fetch_max_bytes"]
    partition_max = FAST_CONSUMER_SETTINGS["max_partition_fetch_bytes"]
    if budget_bytes is not None:
        fetch_max = max(1024 * 1024, min(fetch_max, budget_bytes))
        partition_max = max(1024 * 1024, min(partition_max, budget_bytes // 2))
    return {
        **settings.librdkafka_config(),
        "group.id": "cxj-range-reader",  # required by the client; unused: assign() joins no group
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "error",
        "enable.partition.eof": True,
        "isolation.level": "read_uncommitted",
        "check.crcs": False,
        "fetch.max.bytes": fetch_max,
        "max.partition.fetch.bytes": partition_max,
        "fetch.wait.max.ms": FAST_CONSUMER_SETTINGS["fetch_max_wait_ms"],
        "queued.max.messages.kbytes": max(1024, fetch_max // 1024),
        "fetch.queue.backoff.ms": FETCH_QUEUE_BACKOFF_MS,
        "logger": _CLIENT_LOG,
    }


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

    The records are fetched and decoded by librdkafka (confluent-kafka), not kafka-python:
    kafka-python decodes record batches in pure Python, which cost ~30 CPU µs a record here,
    most of an ingest run; librdkafka costs ~2 (docs/performance.md, "A C client reads the
    ranges"). Planning, offsets and fingerprints stay with kafka-python.
    """
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    covered = report if report is not None else {}
    for r in task:
        covered[(r.topic, r.partition)] = RangeRead(r.topic, r.partition, r.start, r.stop, r.start)
    stops = {(r.topic, r.partition): r.stop for r in task}
    positions = {(r.topic, r.partition): r.start for r in task}
    pending = {key for key in stops if positions[key] < stops[key]}
    if not pending:
        return
    consumer = Consumer(range_reader_config(settings, budget_bytes))
    try:
        consumer.assign([TopicPartition(topic, partition, positions[(topic, partition)]) for topic, partition in sorted(pending)])
        deadline = time.monotonic() + timeout_s
        chunk: list[RawRecord] = []
        chunk_size = 0
        read_bytes = 0
        over_budget = False
        while pending:
            if time.monotonic() > deadline:
                stalled = ", ".join(f"{topic}[{partition}]@{positions[(topic, partition)]}" for topic, partition in sorted(pending))
                raise KafkaReadTimeout(f"reading stalled for {timeout_s:.0f}s at {stalled}")
            # poll() returns as soon as one record is there; consume() would wait for all of
            # CONSUME_MESSAGES or the timeout, so it only takes what is queued already
            first = consumer.poll(0.5)
            messages = [first, *consumer.consume(CONSUME_MESSAGES, 0)] if first is not None else []
            done: set[tuple[str, int]] = set()
            for message in messages:
                key = (message.topic(), message.partition())
                if key not in pending:
                    continue  # already complete, or the budget ended the read: fetched ahead, not read
                stop = stops[key]
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        # every offset below the end has been delivered: offsets with no record
                        # (compacted away, transaction markers) end the range too
                        positions[key] = max(positions[key], min(message.offset(), stop))
                    # other errors (a lost connection, an offset out of range: auto.offset.reset is
                    # "error", so the reader never jumps) leave the range pending; the deadline ends it
                else:
                    offset = message.offset()
                    if offset >= stop:
                        positions[key] = stop
                    else:
                        value = message.value()
                        size = len(value) if value is not None else 0
                        chunk.append((key[0], key[1], offset, message.timestamp()[1], value))
                        chunk_size += size
                        read_bytes += size
                        entry = covered[key]
                        entry.records += 1
                        entry.first = offset if entry.first is None else entry.first
                        entry.last = offset
                        positions[key] = offset + 1
                        over_budget = budget_bytes is not None and read_bytes >= budget_bytes
                if positions[key] >= stop:
                    done.add(key)
                if over_budget:
                    break
            if messages and not over_budget:
                deadline = time.monotonic() + timeout_s
            if over_budget:
                pending.clear()
            elif done:
                pending -= done
                consumer.pause([TopicPartition(topic, partition) for topic, partition in done])
            for (topic, partition), position in positions.items():
                covered[(topic, partition)].stop = position
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
