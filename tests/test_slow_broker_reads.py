"""Look-ups of what offsets hold get their answer from a broker that reads a partition slowly.

The local broker answers a fetch when its read is done or the fetch's wait has passed, whichever
comes first, and in the second case with the partition's high watermark but no records. Its
read time grows with the number of record batches in the partition (about 2-3 ms per 1,000), and
a producer sending one record at a time writes a batch per record. The probe that fingerprints
landed offsets waited 10 ms per fetch: under `cxj simulate --rate 2000`, `run --follow` stopped
after about five minutes and retried the same look-up every 30 s for good, each time logging the
broker as unavailable while a plain consumer read the same offsets in 0.2 s.

Each test first makes the case arise (a fetch waiting 10 ms comes back without records), then
checks that the look-up, and a whole `run --once`, still answer.
"""
from __future__ import annotations

import json
import uuid

import pytest

from pipelines.kafka.offsets import RECORD_WAIT_MS, OffsetReader
from pipelines.kafka.settings import KafkaSettings
from pipelines.kafka.source_log import fingerprint
from pipelines.kafka.topics import ensure_topics
from tests.support import new_topics, run_once, table

BATCHES_PER_STEP = 20_000
MOST_STEPS = 6  # up to 120,000 batches: 0.3 s of reading per fetch on this machine


def _one_record_per_batch(broker: KafkaSettings, topic: str, values: list[bytes]) -> None:
    """Each value as a record batch of its own (librdkafka sends them fast; kafka-python would
    take four times as long)."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": broker.bootstrap_servers, "linger.ms": 0, "batch.num.messages": 1,
                         "queue.buffering.max.messages": len(values) + 1})
    for n, value in enumerate(values):
        producer.produce(topic, value=value, partition=0)
        if n % 1000 == 0:
            producer.poll(0)
    assert producer.flush(30) == 0, "the broker did not take every record"


def _answers_within(broker: KafkaSettings, topic: str, offset: int, wait_ms: int) -> bool:
    """Whether a consumer whose fetches wait ``wait_ms`` gets a record at ``offset`` within 2 s."""
    import time

    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(**broker.client_kwargs(), enable_auto_commit=False, fetch_max_wait_ms=wait_ms,
                             max_poll_records=1)
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek(tp, offset)
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            if any(consumer.poll(timeout_ms=50).values()):
                return True
        return False
    finally:
        consumer.close()


def _fill_until_slow(broker: KafkaSettings, topic: str, value_of) -> int:  # type: ignore[no-untyped-def]
    """Writes batches of one record (``value_of(n)``) until a 10 ms fetch in the middle of the
    partition comes back without records; returns how many were written."""
    written = 0
    for _ in range(MOST_STEPS):
        _one_record_per_batch(broker, topic, [value_of(n) for n in range(written, written + BATCHES_PER_STEP)])
        written += BATCHES_PER_STEP
        if not _answers_within(broker, topic, written // 2, wait_ms=RECORD_WAIT_MS[0]):
            return written
    pytest.fail(f"a 10 ms fetch still came back with records after {written:,} record batches: "
                "the case this test is for did not arise")


def test_records_at_answers_from_a_partition_the_broker_reads_slowly(broker):
    topic = f"slow-{uuid.uuid4().hex[:8]}"
    ensure_topics(broker, [topic], 1)
    written = _fill_until_slow(broker, topic, lambda n: f"record {n}".encode())
    reader = OffsetReader(broker, connect_timeout_s=5.0)
    try:
        middle, last = written // 2, written - 1
        found = reader.records_at({(topic, 0): middle}, {(topic, 0): written})[(topic, 0)]
        assert found is not None and found.offset == middle
        assert found.digest == fingerprint(middle, found.timestamp_ms, None, f"record {middle}".encode()).digest
        longer = reader.record_wait_ms
        assert RECORD_WAIT_MS[0] < longer <= RECORD_WAIT_MS[2]
        # the longer wait is kept for the next look-up, which needs no more
        found = reader.records_at({(topic, 0): last}, {(topic, 0): written})[(topic, 0)]
        assert found is not None and found.offset == last
        assert reader.record_wait_ms == longer
        # an offset at the end still holds nothing, without a fetch
        assert reader.records_at({(topic, 0): written}, {(topic, 0): written}) == {(topic, 0): None}
    finally:
        reader.close()


def test_run_once_lands_every_record_of_a_partition_the_broker_reads_slowly(broker, tmp_path):
    """The whole run: its look-ups of the ranges' last records go through the same probe."""
    topics = new_topics(broker, partitions=1)

    def ticket(n: int) -> bytes:
        return json.dumps({
            "event_id": f"e{n}", "event_type": "ticket.created", "schema_version": 1,
            "occurred_at": f"2026-06-01T{n // 3600 % 24:02d}:{n // 60 % 60:02d}:{n % 60:02d}Z",
            "customer_id": f"c{n % 5000}", "channel": "email", "ticket_id": f"t{n}", "subject": "help",
        }).encode()

    written = _fill_until_slow(broker, topics["tickets"], ticket)
    db = tmp_path / "journeys.duckdb"
    run_once(db, broker, topics)
    landed, dead = table(db, "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM dead_letters)")[0]
    assert (landed, dead) == (written, 0)
    assert table(db, "SELECT max(next_offset) FROM pipeline_offsets")[0][0] == written
