"""ReadKafkaRanges with its real Kafka reader, on Beam's TestPipeline, against the real broker:
records come out once each, in chunks, and each read task's manifest (a tagged output) says
exactly what it covered — also when the byte budget stops it early."""
from __future__ import annotations

import apache_beam as beam
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import BeamAssertException, assert_that, equal_to

from pipelines.kafka.offsets import OffsetReader
from pipelines.kafka.read import OffsetRange, ReadKafkaRanges, manifest_key, read_tasks
from tests.support import new_topics, send


def _sent(broker, count: int, size: int = 100) -> tuple[str, dict[tuple[str, int], int]]:
    """Sends ``count`` numbered messages to a new tickets topic; (topic, end offset per partition)."""
    topics = new_topics(broker)
    messages = [("tickets", f"k{i}".encode(), f"{i:06d}".encode() + b"x" * (size - 6)) for i in range(count)]
    send(broker, topics, messages)
    reader = OffsetReader(broker)
    try:
        partitions, _ = reader.partitions([topics["tickets"]])
        _, ends = reader.bounds(partitions)
    finally:
        reader.close()
    return topics["tickets"], ends


def test_records_come_out_once_and_manifests_cover_the_planned_ranges(broker):
    _, ends = _sent(broker, 300)
    ranges = [OffsetRange(t, p, 0, end) for (t, p), end in ends.items()]
    tasks = read_tasks(ranges, 2)

    def manifests_are(actual: list) -> None:
        entries = sorted(((e["partition"], e["start"], e["stop"], e["records"]) for _, doc in actual for e in doc))
        want = sorted((p, 0, end, end) for (_, p), end in ends.items())
        if sorted(k for k, _ in actual) != sorted(manifest_key(t) for t in tasks) or entries != want:
            raise BeamAssertException(f"manifests {actual} do not cover {want}")

    with TestPipeline(runner=FnApiRunner()) as p:
        read = p | ReadKafkaRanges(ranges, broker, timeout_s=20.0, chunk_records=40, tasks=2)
        values = read.records | "Values" >> beam.FlatMap(lambda chunk: [v[:6] for _, _, _, _, v in chunk])
        assert_that(values, equal_to([f"{i:06d}".encode() for i in range(300)]), label="EachOnce")
        assert_that(read.manifests, manifests_are, label="Manifests")
    assert sum(ends.values()) == 300


def test_the_byte_budget_stops_reading_exactly_where_the_manifest_says(broker):
    _, ends = _sent(broker, 200, size=1000)
    key, end = max(ends.items(), key=lambda kv: kv[1])
    assert end > 10
    ranges = [OffsetRange(key[0], key[1], 0, end)]
    # 10 records of 1,000 bytes reach the 10,000-byte budget: the reader stops after the 10th
    expected = [{"topic": key[0], "partition": key[1], "start": 0, "planned_stop": end, "stop": 10,
                 "records": 10, "first": 0, "last": 9}]

    with TestPipeline(runner=FnApiRunner()) as p:
        read = p | ReadKafkaRanges(ranges, broker, timeout_s=20.0, budget_bytes=10_000)
        offsets = read.records | "Offsets" >> beam.FlatMap(lambda chunk: [o for _, _, o, _, _ in chunk])
        assert_that(offsets, equal_to(list(range(10))), label="Records")
        assert_that(read.manifests | "Entries" >> beam.Map(lambda kv: kv[1]), equal_to([expected]), label="Manifest")


def _transactional(broker, topic: str) -> None:
    """Five records committed in a transaction, then one sent and aborted: the log ends with
    offsets that carry no record (the two transactions' markers). The aborted record is flushed
    before the abort, so it is always in the log: an abort drops records still waiting in the
    producer, and whether it was sent would otherwise depend on timing."""
    from kafka import KafkaProducer

    producer = KafkaProducer(**broker.client_kwargs(), transactional_id=f"{topic}-tx")
    try:
        producer.init_transactions()
        producer.begin_transaction()
        for i in range(5):
            producer.send(topic, f"v{i}".encode(), partition=0)
        producer.commit_transaction()
        producer.begin_transaction()
        producer.send(topic, b"aborted", partition=0)
        producer.flush()
        producer.abort_transaction()
    finally:
        producer.close()


def _as_kafka_python_reads(broker, topic: str, end: int) -> list[tuple[int, bytes]]:
    """(offset, value) of partition 0 up to ``end``, read by kafka-python with its defaults
    (read_uncommitted): the reader must hand on the same records."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(**broker.client_kwargs(), group_id=None, enable_auto_commit=False,
                             consumer_timeout_ms=2000)
    try:
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        consumer.seek(partition, 0)
        read = []
        for record in consumer:
            read.append((record.offset, record.value))
            if consumer.position(partition) >= end:
                break
        return read
    finally:
        consumer.close()


def test_offsets_without_a_record_at_the_end_of_a_range_still_complete_it(broker):
    """The range ends where the log ends, past offsets that hold no record: the reader finishes
    there at once (not at its deadline) and its manifest covers the planned stop, counting only
    the records it handed on."""
    import time

    from pipelines.kafka.read import RangeRead, read_range_chunks

    topic = new_topics(broker)["tickets"]
    _transactional(broker, topic)
    reader = OffsetReader(broker)
    try:
        partitions, _ = reader.partitions([topic])
        _, ends = reader.bounds(partitions)
    finally:
        reader.close()
    end = ends[(topic, 0)]
    report: dict = {}
    started = time.monotonic()
    records = [r for chunk in read_range_chunks(broker, [OffsetRange(topic, 0, 0, end)], 20.0, report=report)
               for r in chunk]
    assert time.monotonic() - started < 10.0, "the reader waited for records that do not exist"
    expected = _as_kafka_python_reads(broker, topic, end)
    assert [v for _, v in expected] == [f"v{i}".encode() for i in range(5)] + [b"aborted"]
    assert [(o, v) for _, _, o, _, v in records] == expected
    assert end > len(records), "the log has no offset without a record: the test proves nothing"
    assert report[(topic, 0)] == RangeRead(topic, 0, 0, end, end, len(records), 0, records[-1][2])


def test_a_range_past_the_end_of_the_log_stalls_where_the_log_ends_and_says_so(broker):
    """A planned stop the broker never reaches (a log that lost its tail) is not reported as read:
    the reader names the partition and the offset it got to when its deadline passes."""
    import pytest

    from pipelines.kafka.read import KafkaReadTimeout, read_range_chunks

    topic, ends = _sent(broker, 30)
    (key, end), *_ = sorted(ends.items())
    report: dict = {}
    with pytest.raises(KafkaReadTimeout, match=rf"{key[0]}\[{key[1]}\]@{end}\b"):
        for _ in read_range_chunks(broker, [OffsetRange(key[0], key[1], 0, end + 5)], 2.0, report=report):
            pass
    assert report[key].stop == end and report[key].records == end


def test_ranges_longer_than_the_clients_queue_are_read_without_waiting_out_its_long_backoff(broker, monkeypatch, caplog):
    """librdkafka fetches ahead until its local queue holds ``queued.min.messages``, then puts
    off the next fetch of every partition for ``fetch.queue.backoff.ms`` (1 s by default). A
    backlog's batch fills that queue (50k records of its own and what lies past its stops), and
    a partition not fetched yet then waited out the whole second with both cores idle: 0.43 s of
    a 202k-event run's first batch (docs/performance.md, "The range reader's fetch backoff").
    Here the queue is made small so that a read of 3,000 records fills it again and again; the
    client's own log must show it backing off, and never for longer than the reader's setting.
    Fails with librdkafka's default (checked)."""
    import logging
    import re

    import pipelines.kafka.read as read
    from pipelines.kafka.read import FETCH_QUEUE_BACKOFF_MS, read_range_chunks

    configured = read.range_reader_config

    def small_queue(settings, budget_bytes):  # type: ignore[no-untyped-def]
        return {**configured(settings, budget_bytes), "queued.min.messages": 100, "debug": "fetch"}

    monkeypatch.setattr(read, "range_reader_config", small_queue)
    caplog.set_level(logging.DEBUG, logger="cxj.kafka.reader")
    _, ends = _sent(broker, 3000)
    ranges = [OffsetRange(t, p, 0, end) for (t, p), end in ends.items()]
    records = [r for chunk in read_range_chunks(broker, ranges, 20.0) for r in chunk]

    assert sorted(v[:6] for *_, v in records) == [f"{i:06d}".encode() for i in range(3000)]
    backoffs = [int(ms) for ms in re.findall(r"Fetch backoff for (\d+)ms: Local: Queue full", caplog.text)]
    assert backoffs, "the client's queue never filled: the test proves nothing"
    assert max(backoffs) <= FETCH_QUEUE_BACKOFF_MS
