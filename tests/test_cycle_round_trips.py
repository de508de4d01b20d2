"""Fewer broker round trips per cycle, and a caught-up `--follow` that wakes on new records
(pipelines/kafka/offsets.py; docs/performance.md, "Per-cycle cost and freshness").

Against the real local broker: the end offsets a look-up confirms in one round (the previous
answer serving as the first of two agreeing rounds) are the true ones, round after round; a
reader without an earlier answer still takes two rounds; the waiter returns as soon as a record
arrives and not before; and a `--follow` run with a 60 s poll interval lands an event sent while
it is idle long before that interval is out, accounting for every record.
"""
from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone

from pipelines.config.run_config import RunConfig, Stopper
from pipelines.kafka.offsets import OffsetReader
from pipelines.local.microbatch import MicroBatchRunner, RunListener
from pipelines.storage.store import Store
from tests.support import send_events, table


def _events(prefix: str, n: int) -> list[dict]:
    start = datetime(2026, 9, 1, tzinfo=timezone.utc)
    return [{"event_id": f"{prefix}-{i}", "event_type": "ticket.created", "customer_id": f"{prefix}{i % 7}",
             "schema_version": 1, "occurred_at": (start + timedelta(minutes=i)).isoformat(),
             "ticket_id": f"{prefix}T{i}", "channel": "email"} for i in range(n)]


def _true_ends(broker, partitions) -> dict:
    """End offsets by reading every record (a fresh consumer per look-up)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(**broker.client_kwargs(), group_id=None, enable_auto_commit=False,
                             auto_offset_reset="earliest", consumer_timeout_ms=1500)
    try:
        consumer.assign([TopicPartition(t, p) for t, p in partitions])
        ends = {k: 0 for k in partitions}
        for record in consumer:
            key = (record.topic, record.partition)
            ends[key] = max(ends[key], record.offset + 1)
        return ends
    finally:
        consumer.close()


class _Counted(OffsetReader):
    """Counts the ListOffsets requests for end offsets (one per round)."""

    rounds = 0

    def _ends_once(self, partitions, deadline):  # type: ignore[no-untyped-def]
        self.rounds += 1
        return super()._ends_once(partitions, deadline)


def test_one_round_per_look_up_after_the_first_and_the_ends_stay_true(broker, topics):
    reader = _Counted(broker, connect_timeout_s=5.0)
    try:
        partitions, _ = reader.partitions(topics.values())
        sent = 0
        for round_no in range(6):
            sent += send_events(broker, topics, _events(f"r{round_no}", 5 + 13 * round_no))
            before = reader.rounds
            true_ends = _true_ends(broker, partitions)
            for _ in range(3):
                _, ends = reader.bounds(partitions)
                assert ends == true_ends
            assert sum(ends.values()) == sent
            # the first look-up of a reader takes two agreeing rounds; later ones need one each
            assert reader.rounds - before == (4 if round_no == 0 else 3)
        assert reader.latest_ends(partitions) == ends  # the lag look-up: one round, no earliest offsets
    finally:
        reader.close()
    fresh = _Counted(broker, connect_timeout_s=5.0)
    try:
        assert fresh.bounds(partitions)[1] == ends and fresh.rounds == 2
    finally:
        fresh.close()


def test_the_waiter_returns_when_a_record_arrives_and_not_before(broker, topics):
    send_events(broker, topics, _events("w", 4))
    reader = OffsetReader(broker, connect_timeout_s=5.0)
    try:
        partitions, _ = reader.partitions(topics.values())
        _, ends = reader.bounds(partitions)
        started = time.monotonic()
        assert reader.wait_for_records(ends, 1.5) is False  # nothing new: waits the time out
        assert 1.4 <= time.monotonic() - started < 10
        threading.Timer(1.0, send_events, (broker, topics, _events("w2", 1))).start()
        started = time.monotonic()
        assert reader.wait_for_records(ends, 60.0) is True
        assert time.monotonic() - started < 30  # woke on the record, long before the minute
        stop = threading.Event()
        threading.Timer(0.5, stop.set).start()
        started = time.monotonic()
        assert reader.wait_for_records({k: e + 1000 for k, e in ends.items()}, 60.0, stop.is_set) is False
        assert time.monotonic() - started < 30  # a stop request ends the wait
        assert reader.wait_for_records({}, 5.0) is False
    finally:
        reader.close()


class _Watch(RunListener):
    def __init__(self) -> None:
        self.idle_seen = threading.Event()
        self.landed: list[tuple[float, int]] = []

    def idle(self, positions) -> None:  # type: ignore[no-untyped-def]
        self.idle_seen.set()

    def batch_landed(self, batch, positions) -> None:  # type: ignore[no-untyped-def]
        self.landed.append((time.monotonic(), batch.consumed))


def test_follow_lands_new_records_long_before_its_poll_interval(broker, topics, db):
    send_events(broker, topics, _events("f", 20))
    config = RunConfig(db=db, settings=broker, topics=topics, poll_interval_s=60.0)
    stopper = Stopper()
    watch = _Watch()
    with Store(db) as store:
        runner = MicroBatchRunner(config, store)
        runner.listeners.append(watch)
        follow = threading.Thread(target=runner.follow, args=(stopper,), daemon=True)
        follow.start()
        try:
            assert watch.idle_seen.wait(300), "the first batch never finished"
            assert [n for _, n in watch.landed] == [20]
            sent_at = time.monotonic()
            send_events(broker, topics, _events("g", 3))
            deadline = sent_at + 300
            while len(watch.landed) < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert len(watch.landed) == 2 and watch.landed[1][1] == 3
            # the wait ended on the new records: planned at once, not after the 60 s interval
            # (the batch itself may take many seconds on a loaded machine, so the bound is loose)
            assert watch.landed[1][0] - sent_at < 45
        finally:
            stopper.stopping = True
            follow.join(120)
            runner.close()
    assert not follow.is_alive()
    assert table(db, "SELECT count(*), sum(consumed), sum(landed + duplicates + dead_letters) FROM pipeline_batches") == [(2, 23, 23)]
    assert table(db, "SELECT sum(next_offset) FROM pipeline_offsets") == [(23,)]


def test_once_plans_its_first_batch_from_the_look_up_it_starts_with(broker, topics, db, monkeypatch):
    """`run --once` looks up the broker's positions to fix its targets, then plans the first
    batch from that same look-up instead of a second one: for a backlog of one batch, two look-ups
    (the start's, and the plan that finds nothing more to read) where there were three, and
    every record landed."""
    look_ups = []
    bounds = OffsetReader.bounds

    def counted_bounds(reader, partitions):  # type: ignore[no-untyped-def]
        look_ups.append(len(partitions))
        return bounds(reader, partitions)

    monkeypatch.setattr(OffsetReader, "bounds", counted_bounds)
    sent = send_events(broker, topics, _events("o", 40))
    with Store(db) as store:
        runner = MicroBatchRunner(RunConfig(db=db, settings=broker, topics=topics), store)
        try:
            batches = runner.run_once()
        finally:
            runner.close()
        assert runner._first_plan_from is None  # nothing left for a later plan to start from
    assert [b.consumed for b in batches] == [sent]
    assert table(db, "SELECT count(*), count(DISTINCT event_id) FROM events") == [(sent, sent)]
    assert len(look_ups) == 2  # the start's (also the first plan's) and the idle plan's
