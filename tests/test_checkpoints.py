"""The writer checkpoints the database itself, after a batch is landed and published.

DuckDB would checkpoint inside the COMMIT that takes its write-ahead log past 16 MB, so the
replica publish after it waited for the checkpoint: 0.2-0.7 s on a following run's slowest
cycles. The store turns DuckDB's automatic checkpoint off and checkpoints once the log reaches
``CHECKPOINT_WAL_BYTES``, after the publish (docs/performance.md, "Checkpoints inside the
cycle"). While a backlog lands, the log may grow to ``BACKLOG_CHECKPOINT_WAL_BYTES`` first
(docs/performance.md, "Fewer checkpoints while a backlog lands"). These tests check that the log
is checkpointed when it should be, and only then, on a real store fed by the real broker.
"""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from pipelines.config.run_config import RunConfig
from pipelines.kafka.simulator import generate_customer_events, to_messages
from pipelines.local.microbatch import MicroBatchRunner
from pipelines.storage import store as store_module
from pipelines.storage.store import Store
from tests.support import send, table, wal_bytes


def test_the_log_is_checkpointed_after_a_batch_once_it_is_large_enough_and_not_before(
        broker, topics, tmp_path, monkeypatch):
    events = generate_customer_events(30, 41, datetime(2026, 8, 1, tzinfo=timezone.utc))
    sent = send(broker, topics, to_messages(events, 41, out_of_order=0.05, duplicates=0.05, malformed=0.02))
    db = tmp_path / "journeys.duckdb"
    wal = Path(f"{db}.wal")
    with Store(db) as store:
        runner = MicroBatchRunner(RunConfig(db=db, settings=broker, topics=topics, max_batch_events=100), store)
        try:
            assert runner.run_batch() is not None
            # a batch's log is far below 16 MB: neither DuckDB (inside the COMMIT) nor the store
            # (after the publish) checkpointed it
            assert wal.exists() and wal.stat().st_size > 0
            # (records wait behind every batch here but the last: the backlog's threshold is
            # set to the same size, so this test is about the threshold itself)
            for threshold in ("CHECKPOINT_WAL_BYTES", "BACKLOG_CHECKPOINT_WAL_BYTES"):
                monkeypatch.setattr(store_module, threshold, wal.stat().st_size + 1)
            assert runner.run_batch() is not None  # the log passes the threshold: checkpointed
            assert not wal.exists() or wal.stat().st_size == 0
            while runner.run_batch() is not None:  # and again whenever it passes it
                assert not wal.exists() or wal.stat().st_size <= store_module.CHECKPOINT_WAL_BYTES
        finally:
            runner.close()
    # everything landed, and the store a later process opens holds it all
    assert table(db, "SELECT sum(consumed) FROM pipeline_batches") == [(sent,)]
    assert table(db, "SELECT count(*) FROM pipeline_batches")[0][0] >= 4
    assert not wal.exists()  # the close checkpointed what was left


def test_a_backlog_checkpoints_at_its_own_threshold_and_the_batch_that_ends_it_checkpoints_the_rest(
        broker, topics, tmp_path, monkeypatch):
    """Every batch's log is past ``CHECKPOINT_WAL_BYTES`` here. While records wait behind a batch,
    the log is left to grow until it reaches ``BACKLOG_CHECKPOINT_WAL_BYTES``; the batch with
    nothing behind it checkpoints whatever is left. Nothing is lost either way."""
    events = generate_customer_events(40, 47, datetime(2026, 8, 1, tzinfo=timezone.utc))
    sent = send(broker, topics, to_messages(events, 47, duplicates=0.05, malformed=0.02))
    db = tmp_path / "journeys.duckdb"
    wal = Path(f"{db}.wal")
    monkeypatch.setattr(store_module, "CHECKPOINT_WAL_BYTES", 1)
    monkeypatch.setattr(store_module, "BACKLOG_CHECKPOINT_WAL_BYTES", 1 << 40)
    with Store(db) as store:
        runner = MicroBatchRunner(RunConfig(db=db, settings=broker, topics=topics, max_batch_events=100), store)
        try:
            logs = []
            first = runner.run_batch()
            assert first is not None
            logs.append(wal_bytes(db))
            # the backlog's own threshold is passed by the next batch: checkpointed there
            monkeypatch.setattr(store_module, "BACKLOG_CHECKPOINT_WAL_BYTES", logs[0] + 1)
            assert runner.run_batch() is not None
            logs.append(wal_bytes(db))
            monkeypatch.setattr(store_module, "BACKLOG_CHECKPOINT_WAL_BYTES", 1 << 40)
            last = first
            while (batch := runner.run_batch()) is not None:
                last = batch
                logs.append(wal_bytes(db))
        finally:
            runner.close()
        consumed_last = last.consumed
    assert len(logs) >= 4, logs
    assert logs[0] > 0  # a batch with records behind it: its log is far below the backlog's threshold, kept
    assert logs[1] == 0  # past the backlog's threshold: checkpointed after the batch that took it there
    assert all(later > earlier for earlier, later in zip(logs[1:-1], logs[2:-1])), logs  # growing meanwhile
    assert logs[-1] == 0 and consumed_last > 0  # the batch that ended the backlog checkpointed the rest
    assert table(db, "SELECT sum(consumed) FROM pipeline_batches") == [(sent,)]
    assert not wal.exists()


def test_a_checkpoint_that_fails_loses_nothing_warns_once_and_is_tried_again(broker, topics, tmp_path, monkeypatch, caplog):
    """DuckDB refuses a CHECKPOINT while another transaction runs (here: one left open on a
    second cursor of the writer's database). The batch stays landed, the log keeps it, one
    warning names the cause, and the checkpoint is done after the next batch."""
    import logging

    events = generate_customer_events(20, 43, datetime(2026, 8, 1, tzinfo=timezone.utc))
    sent = send(broker, topics, to_messages(events, 43))
    db = tmp_path / "journeys.duckdb"
    wal = Path(f"{db}.wal")
    for threshold in ("CHECKPOINT_WAL_BYTES", "BACKLOG_CHECKPOINT_WAL_BYTES"):
        monkeypatch.setattr(store_module, threshold, 1)  # every batch's log is due, backlog or not
    caplog.set_level(logging.WARNING, logger="cxj")
    with Store(db) as store:
        runner = MicroBatchRunner(RunConfig(db=db, settings=broker, topics=topics, max_batch_events=100), store)
        try:
            other = store.con.cursor()
            other.execute("BEGIN TRANSACTION")
            other.execute("SELECT count(*) FROM events").fetchall()
            first = runner.run_batch()
            assert first is not None and first.consumed > 0
            warnings = [r.getMessage() for r in caplog.records if "checkpoint" in r.getMessage()]
            assert len(warnings) == 1 and "tried again after the next batch" in warnings[0], warnings
            assert wal.exists() and wal.stat().st_size > 0  # the batch is in the log, not checkpointed
            other.execute("COMMIT")
            other.close()
            assert runner.run_batch() is not None
            assert not wal.exists() or wal.stat().st_size == 0  # done after the next batch
            while runner.run_batch() is not None:
                pass
        finally:
            runner.close()
    assert table(db, "SELECT sum(consumed) FROM pipeline_batches") == [(sent,)]
    assert len([r for r in caplog.records if "checkpoint" in r.getMessage()]) == 1


def test_a_log_written_while_the_store_opens_is_checkpointed_there_once_it_is_due(tmp_path, monkeypatch):
    """What the writer writes at open (the views every time, an upgrade of an older store such as
    the links' batch fill) is checked against the threshold before any batch runs, as a batch's
    log is: a large upgrade is not left in the log until the first batch or the close."""
    db = tmp_path / "journeys.duckdb"
    wal = Path(f"{db}.wal")
    Store(db).close()
    with Store(db):  # the views are written again: a small log, not due
        assert wal.exists() and wal.stat().st_size > 0
    monkeypatch.setattr(store_module, "CHECKPOINT_WAL_BYTES", 1)
    with Store(db):  # the same log is due now: checkpointed at open
        assert not wal.exists() or wal.stat().st_size == 0
