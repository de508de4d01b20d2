"""The writer checkpoints the database itself, after a batch is landed and published.

DuckDB would checkpoint inside the COMMIT that takes its write-ahead log past 16 MB, so the
replica publish after it waited for the checkpoint: 0.2-0.7 s on a following run's slowest
cycles. The store turns DuckDB's automatic checkpoint off and checkpoints once the log reaches
``CHECKPOINT_WAL_BYTES``, after the publish (docs/performance.md, "Checkpoints inside the
cycle"). These tests check that the log is checkpointed when it should be, and only then, on a
real store fed by the real broker.
"""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from pipelines.config.run_config import RunConfig
from pipelines.kafka.simulator import generate_customer_events, to_messages
from pipelines.local.microbatch import MicroBatchRunner
from pipelines.storage import store as store_module
from pipelines.storage.store import Store
from tests.support import send, table


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
            monkeypatch.setattr(store_module, "CHECKPOINT_WAL_BYTES", wal.stat().st_size + 1)
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


def test_a_checkpoint_that_fails_loses_nothing_warns_once_and_is_tried_again(broker, topics, tmp_path, monkeypatch, caplog):
    """DuckDB refuses a CHECKPOINT while another transaction runs (here: one left open on a
    second cursor of the writer's database). The batch stays landed, the log keeps it, one
    warning names the cause, and the checkpoint is done after the next batch."""
    import logging

    events = generate_customer_events(20, 43, datetime(2026, 8, 1, tzinfo=timezone.utc))
    sent = send(broker, topics, to_messages(events, 43))
    db = tmp_path / "journeys.duckdb"
    wal = Path(f"{db}.wal")
    monkeypatch.setattr(store_module, "CHECKPOINT_WAL_BYTES", 1)  # every batch's log is due
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
