"""The offset reader's probe consumer is reused across look-ups; it must answer every time.

kafka-python 3.0 parks the buffered records of a paused partition and restores them only when
its in-line slot is None. A drained record set in that slot is falsy but not None, so parked
records were never restored, and the fetcher never fetched those partitions again: a fingerprint
look-up (which stops reading a partition once its first record arrived) left partitions whose
end offsets no later look-up could confirm. `benchmarks/throughput.py` at 200k events failed with
"did not confirm the end offsets of 9 partitions" on its third batch. The probe now drops
answered partitions from its assignment instead of pausing them; these tests drive the sequence
that broke it against the real broker.
"""
from __future__ import annotations

import json

from pipelines.kafka.offsets import OffsetReader


def _fill(broker, topic: str, partitions: int, per_partition: int) -> None:
    """Large record batches (1 MB) of small records in every partition: one fetch brings
    thousands of records, far more than a look-up reads, so records stay buffered when a
    partition is done."""
    from kafka import KafkaProducer

    producer = KafkaProducer(**broker.client_kwargs(), linger_ms=50, batch_size=1 << 20, acks=1)
    try:
        for i in range(per_partition):
            for p in range(partitions):
                value = json.dumps({"n": i}).encode()
                producer.send(topic, value=value, key=f"k{p}".encode(), partition=p)
        producer.flush()
    finally:
        producer.close()


def test_end_offsets_are_confirmed_after_any_number_of_fingerprint_look_ups(broker, topics):
    per_partition = 15_000
    topic = topics["tickets"]
    _fill(broker, topic, 3, per_partition)
    reader = OffsetReader(broker, connect_timeout_s=5.0)
    try:
        partitions, _ = reader.partitions([topic])
        assert len(partitions) == 3
        expected_ends = {k: per_partition for k in partitions}
        for round_no in range(8):
            _, ends = reader.bounds(partitions)
            assert ends == expected_ends, f"round {round_no}"
            offsets = {k: 100 + 1_500 * round_no + 7 * k[1] for k in partitions}
            found = reader.records_at(offsets, ends)
            assert all(found[k] is not None and found[k].offset == offsets[k] for k in partitions), found
            assert reader.latest_ends(partitions) == expected_ends
    finally:
        reader.close()


def test_a_partition_answered_first_keeps_being_answered_while_others_wait(broker, topics):
    """One partition far behind the others (one record) and two full ones, looked up by turns."""
    from kafka import KafkaProducer

    topic = topics["chats"]
    _fill(broker, topic, 2, 15_000)  # partitions 0 and 1 full, partition 2 empty so far
    producer = KafkaProducer(**broker.client_kwargs(), acks=1)
    producer.send(topic, value=b"{}", key=b"k", partition=2)
    producer.flush()
    producer.close()
    reader = OffsetReader(broker, connect_timeout_s=5.0)
    try:
        partitions, _ = reader.partitions([topic])
        expected_ends = {(topic, 0): 15_000, (topic, 1): 15_000, (topic, 2): 1}
        for round_no in range(6):
            offsets = {(topic, 0): 10 * round_no, (topic, 1): 7_500 + round_no, (topic, 2): 0}
            found = reader.records_at(offsets, expected_ends)
            assert {k: v.offset for k, v in found.items() if v is not None} == offsets
            assert reader.bounds(partitions)[1] == expected_ends
    finally:
        reader.close()
