"""Replica maintenance runs beside the cycle, and the replica still shows exactly what the
database landed.

Maintenance (the small files' merge every few publishes, the full one with snapshot expiry less
often) runs on a thread and a connection of its own while the next batch is read, assembled and
landed; the next publish waits for it (docs/performance.md, "Replica maintenance beside the
cycle"). These tests land real batches (real broker, real DuckDB file, real DuckLake replica)
with maintenance after every second publish, returning customers in every batch so each publish
deletes rows from files the maintenance is merging, and compare the replica with the database
row for row after each batch.
"""
from __future__ import annotations

import logging
import threading
from typing import Any

import pytest

from pipelines.local.microbatch import MicroBatchRunner, RunConfig
from pipelines.storage.replica import LAKE_ALIAS, MAINTENANCE_THREAD, TABLES
from pipelines.storage.store import Store
from tests.support import send_events, table
from tests.test_replica_incremental import ticket

ROUNDS = 7
CUSTOMERS = 6


def round_events(k: int) -> list[dict[str, Any]]:
    """Round ``k``: a new ticket for every customer (all but the first round: returning customers,
    whose earlier journeys lie in files published before), and one new customer."""
    events = [e for c in range(CUSTOMERS) for e in ticket(f"c{c}", f"T{k}", day=k * 0.5 + c * 0.01, solved=k % 2 == 0)]
    return events + ticket(f"new{k}", "T", day=k * 0.5)


def differences(store: Store) -> list[str]:
    """The tables whose replica rows differ from the database's (read on the publishing
    connection, which the maintenance thread never uses)."""
    con, source = store.replica.con, store.replica.source
    return [t for t in TABLES
            if con.execute(f"SELECT * FROM {LAKE_ALIAS}.{t} ORDER BY ALL").fetchall()
            != con.execute(f"SELECT * FROM {source}.{t} ORDER BY ALL").fetchall()]


def maintenance_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == MAINTENANCE_THREAD]


def live_files(store: Store, table: str) -> int:
    return store.replica.con.execute(f"SELECT count(*) FROM ducklake_list_files('{LAKE_ALIAS}', '{table}')").fetchone()[0]


def test_maintenance_runs_on_its_own_thread_and_every_publish_stays_exact(broker, topics, db, caplog):
    caplog.set_level(logging.INFO, logger="cxj")
    config = RunConfig(db=db, settings=broker, topics=topics)
    sent = 0
    with Store(db) as store:
        assert store.replica is not None
        store.replica.compact_every, store.replica.merge_every = 5, 2  # the first publish, at open, counts
        runner = MicroBatchRunner(config, store)
        try:
            for k in range(ROUNDS):
                sent += send_events(broker, topics, round_events(k))
                assert runner.run_once(), f"round {k} landed nothing"
                # the replica is compared while the maintenance this publish started may still run
                assert differences(store) == [], f"round {k}"
            store.replica.wait_for_maintenance()
            # each publish wrote a file per journey table; merges and rewrites keep them few
            assert max(live_files(store, t) for t in ("journeys", "journey_events")) <= 3
        finally:
            runner.close()
    assert maintenance_threads() == [], "closing the store left maintenance running"
    full = [r for r in caplog.records if "maintenance in" in r.getMessage()]
    light = [r for r in caplog.records if "small files merged" in r.getMessage()]
    assert len(full) >= 1 and len(light) >= 2, [r.getMessage() for r in caplog.records]
    assert {r.threadName for r in full + light} == {MAINTENANCE_THREAD}, "maintenance ran inside the cycle"
    assert any(not r.getMessage().startswith(f"replica {db}.lake: 0 ") for r in light), "no small file was ever merged"
    assert not [r.getMessage() for r in caplog.records if "failed" in r.getMessage()
                or "disagrees with the database" in r.getMessage()]
    assert table(db, "SELECT count(*) FROM events") == [(sent,)]
    with Store(db) as store:  # the next start finds the replica exact (no rebuild) and maintains it again
        assert differences(store) == []
        store.replica.compact_every = store.replica.merge_every = 1
        store.replica.after_land()  # nothing new to publish: no maintenance is due
        assert maintenance_threads() == []


@pytest.mark.parametrize("landings", [1, 3])
def test_the_next_publish_waits_for_a_running_maintenance(broker, topics, db, landings):
    """The publish after a maintenance starts only once it finished: maintenance and publishes
    never share the lake, whatever the number of batches landed meanwhile."""
    config = RunConfig(db=db, settings=broker, topics=topics)
    with Store(db) as store:
        runner = MicroBatchRunner(config, store)
        try:
            sent = send_events(broker, topics, round_events(0))
            runner.run_once()
            store.replica._start_maintenance(store.replica.compact)
            running = store.replica._maintenance
            assert running is not None
            for k in range(1, 1 + landings):
                sent += send_events(broker, topics, round_events(k))
                runner.run_once()  # lands, then publishes: after the maintenance, never beside it
                assert not running.is_alive()
                assert differences(store) == []
        finally:
            runner.close()
    assert table(db, "SELECT count(*) FROM events") == [(sent,)]
