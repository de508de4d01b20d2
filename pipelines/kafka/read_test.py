"""ReadKafkaRanges on Beam's TestPipeline, without a broker: the composite's own job.

The composite splits the planned ranges into read tasks, hands each task to its reader, passes
the chunks on and emits one manifest per task on the ``manifests`` tag. Here the reader is an
in-memory log with the same contract as ``read_range_chunks`` (offsets in [start, stop), stop
at the byte budget after at least one record, report what was covered); the Kafka reader
itself runs against the real broker in tests/test_read_kafka_ranges.py.
"""
from __future__ import annotations

from typing import Iterator, Optional

import apache_beam as beam
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import BeamAssertException, assert_that, equal_to

from pipelines.kafka.read import OffsetRange, RangeRead, ReadKafkaRanges, manifest_key, manifest_name, read_tasks
from pipelines.kafka.settings import KafkaSettings

SETTINGS = KafkaSettings(bootstrap_servers="127.0.0.1:1")  # never contacted: the log is in memory
# topic -> partition -> offset -> value; offsets 3 and 4 of t[1] are missing (a compacted log)
LOG = {
    "t": {
        0: {o: f"t0-{o}".encode() * 10 for o in range(0, 40)},
        1: {o: f"t1-{o}".encode() * 10 for o in range(0, 20) if o not in (3, 4)},
        2: {o: None for o in range(5, 9)},  # tombstones count as records
    }
}


def in_memory_log(settings: KafkaSettings, task: list[OffsetRange], timeout_s: float, chunk_records: int = 5000,
                  budget_bytes: Optional[int] = None, report: Optional[dict] = None) -> Iterator[list[tuple]]:
    """read_range_chunks' contract over LOG."""
    covered = report if report is not None else {}
    read = 0
    chunk: list[tuple] = []
    for r in task:
        entry = covered[(r.topic, r.partition)] = RangeRead(r.topic, r.partition, r.start, r.stop, r.start)
        for offset in range(r.start, r.stop):
            if budget_bytes is not None and read >= budget_bytes:
                break
            entry.stop = offset + 1
            if offset not in LOG[r.topic][r.partition]:
                continue
            value = LOG[r.topic][r.partition][offset]
            chunk.append((r.topic, r.partition, offset, 1000 + offset, value))
            read += len(value or b"")
            entry.records += 1
            entry.first = offset if entry.first is None else entry.first
            entry.last = offset
            if len(chunk) >= chunk_records:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


def at_most(limit: int):  # type: ignore[no-untyped-def]
    def matcher(sizes: list[int]) -> None:
        if not sizes or max(sizes) > limit:
            raise BeamAssertException(f"chunk sizes {sizes} exceed {limit}")

    return matcher


def test_every_planned_record_comes_out_once_and_each_task_reports_its_ranges():
    ranges = [OffsetRange("t", 0, 10, 40), OffsetRange("t", 1, 0, 20), OffsetRange("t", 2, 5, 9)]
    expected_records = ([("t", 0, o) for o in range(10, 40)] + [("t", 1, o) for o in range(20) if o not in (3, 4)]
                        + [("t", 2, o) for o in range(5, 9)])
    tasks = read_tasks(ranges, 2)
    assert len(tasks) == 2

    def manifests_are(actual: list) -> None:
        keys = sorted(key for key, _ in actual)
        if keys != sorted(manifest_key(task) for task in tasks):
            raise BeamAssertException(f"one manifest per task expected, got {keys}")
        entries = sorted((e for _, doc in actual for e in doc), key=lambda e: (e["topic"], e["partition"]))
        expected = [
            {"topic": "t", "partition": 0, "start": 10, "planned_stop": 40, "stop": 40, "records": 30, "first": 10, "last": 39},
            {"topic": "t", "partition": 1, "start": 0, "planned_stop": 20, "stop": 20, "records": 18, "first": 0, "last": 19},
            {"topic": "t", "partition": 2, "start": 5, "planned_stop": 9, "stop": 9, "records": 4, "first": 5, "last": 8},
        ]
        if entries != expected:
            raise BeamAssertException(f"manifest entries {entries} != {expected}")

    with TestPipeline(runner=FnApiRunner()) as p:
        read = p | ReadKafkaRanges(ranges, SETTINGS, chunk_records=7, tasks=2, reader=in_memory_log)
        flat = read.records | "Offsets" >> beam.FlatMap(lambda chunk: [(t, p, o) for t, p, o, _, _ in chunk])
        sizes = read.records | "Sizes" >> beam.Map(len)
        assert_that(flat, equal_to(expected_records), label="Records")
        assert_that(sizes, at_most(7), label="Chunked")
        assert_that(read.manifests, manifests_are, label="Manifests")


def test_the_byte_budget_is_shared_by_the_tasks_and_manifests_say_where_reading_stopped():
    # t[0] values are 50 bytes ("t0-NN" x 10 for NN >= 10): a 600-byte batch budget over 2 tasks
    # gives 300 bytes each, so partition 0's task stops after 6 records
    ranges = [OffsetRange("t", 0, 10, 40), OffsetRange("t", 2, 5, 9)]
    read = ReadKafkaRanges(ranges, SETTINGS, tasks=2, budget_bytes=600, reader=in_memory_log)
    assert read.budget_bytes == 300

    def stops(actual: list) -> None:
        got = sorted((e["partition"], e["stop"], e["records"]) for _, doc in actual for e in doc)
        if got != [(0, 16, 6), (2, 9, 4)]:
            raise BeamAssertException(f"unexpected stops {got}")

    with TestPipeline(runner=FnApiRunner()) as p:
        out = p | read
        flat = out.records | "Offsets" >> beam.FlatMap(lambda chunk: [(p_, o) for _, p_, o, _, _ in chunk])
        assert_that(flat, equal_to([(0, o) for o in range(10, 16)] + [(2, o) for o in range(5, 9)]), label="Records")
        assert_that(out.manifests, stops, label="Manifests")


def test_no_ranges_no_records_no_manifests():
    with TestPipeline(runner=FnApiRunner()) as p:
        out = p | ReadKafkaRanges([OffsetRange("t", 0, 5, 5)], SETTINGS, reader=in_memory_log)
        assert_that(out.records, equal_to([]), label="Records")
        assert_that(out.manifests, equal_to([]), label="Manifests")


def test_read_tasks_balance_sizes_and_manifest_names_are_deterministic():
    ranges = [OffsetRange("a", p, 0, size) for p, size in enumerate([100, 60, 50, 10, 0])]
    tasks = read_tasks(ranges, 2)
    assert sorted(sum(r.size for r in task) for task in tasks) == [110, 110]
    assert all(r.size > 0 for task in tasks for r in task), "empty ranges are not read"
    assert read_tasks(ranges, 10) == read_tasks(list(reversed(ranges)), 10)
    assert manifest_name([OffsetRange("a", 3, 7, 9), OffsetRange("a", 1, 42, 50)]) == "read-a-1-42.json"
