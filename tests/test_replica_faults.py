"""The read replica's promises under faults, on the real DuckLake replica and real DuckDB files:

- a publish that fails never fails the batch: the batch lands, one warning says so, and the next
  publish catches the replica up with everything it missed;
- without the DuckDB extensions the replica is disabled with ONE warning and the pipeline lands;
- a change of the landing tables' columns rebuilds the replica from the database;
- a replica deleted under the running writer is re-created, not published into a deleted file.
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from pipelines.config.run_config import RunConfig
from pipelines.local.microbatch import MicroBatchRunner
from pipelines.storage.replica import LAKE_ALIAS, TABLES, data_path, lake_dir
from pipelines.storage.store import Store
from tests.support import new_topics, send_events, table


def events(prefix: str, n: int) -> list[dict]:
    start = datetime(2026, 9, 1, tzinfo=timezone.utc)
    return [{"event_id": f"{prefix}-{i}", "event_type": "ticket.created", "customer_id": f"{prefix}{i % 5}",
             "schema_version": 1, "occurred_at": (start + timedelta(minutes=i)).isoformat(),
             "ticket_id": f"{prefix}T{i}", "channel": "email"} for i in range(n)]


def replica_matches_database(store: Store) -> None:
    """Every replicated table holds exactly the database's rows (compared as sets of whole rows)."""
    assert store.replica is not None
    con = store.replica.con
    source = store.replica.source
    for name in TABLES:
        only_db = con.execute(f"SELECT count(*) FROM (FROM {source}.{name} EXCEPT ALL FROM {LAKE_ALIAS}.{name})").fetchone()[0]
        only_lake = con.execute(f"SELECT count(*) FROM (FROM {LAKE_ALIAS}.{name} EXCEPT ALL FROM {source}.{name})").fetchone()[0]
        assert (name, only_db, only_lake) == (name, 0, 0)


def snapshots(store: Store) -> int:
    """DuckLake snapshots in the replica's catalog (readable while its data files are not)."""
    assert store.replica is not None
    return store.replica.con.execute(f"SELECT count(*) FROM ducklake_snapshots('{LAKE_ALIAS}')").fetchone()[0]


def publish_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and "publish failed, will retry" in r.getMessage()]


def test_failed_publishes_are_retried_without_failing_a_batch(broker, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="cxj")
    topics = new_topics(broker)
    db = tmp_path / "journeys.duckdb"
    send_events(broker, topics, events("a", 40))
    with Store(db) as store:
        runner = MicroBatchRunner(RunConfig(db=db, settings=broker, topics=topics), store)
        try:
            assert [b.batch_id for b in runner.run_once()] == [1]
            assert store.replica is not None and store.replica.published_batch_id() == 1

            published_snapshots = snapshots(store)
            # the replica's data directory becomes unusable: a file where the directory was
            data = data_path(db)
            moved = data.with_name("data.moved")
            data.rename(moved)
            data.write_text("not a directory")
            for n, prefix in enumerate(("b", "c"), start=2):
                send_events(broker, topics, events(prefix, 30))
                landed = runner.run_once()
                assert [(b.batch_id, b.landed) for b in landed] == [(n, 30)], "the batch lands although publishing failed"
                assert snapshots(store) == published_snapshots, "a failed publish commits nothing to the replica"
                assert len(publish_warnings(caplog)) == n - 1, "one warning per failed publish"

            data.unlink()
            moved.rename(data)
            assert store.replica.published_batch_id() == 1  # readers still see whole batch 1 only
            send_events(broker, topics, events("d", 20))
            assert [b.batch_id for b in runner.run_once()] == [4]
            assert store.replica.published_batch_id() == 4, "the next publish catches up every missed batch"
            assert len(publish_warnings(caplog)) == 2
            replica_matches_database(store)
        finally:
            runner.close()
    assert table(db, "SELECT count(*), sum(landed) FROM pipeline_batches") == [(4, 120)]


@pytest.mark.parametrize("missing", [("sqlite_scanner",), ("ducklake",), ("sqlite_scanner", "ducklake")])
def test_missing_duckdb_extensions_disable_the_replica_with_one_warning(broker, tmp_path, missing):
    """A machine without the extension wheels (shadowed here by empty packages of the same name,
    and an empty home so no DuckDB extension directory exists): the pipeline still lands."""
    shadow = tmp_path / "shadow"
    for name in missing:
        package = shadow / f"duckdb_extension_{name}"
        package.mkdir(parents=True)
        (package / "__init__.py").write_text("# this machine has no extension binary\n")
    home = tmp_path / "home"
    home.mkdir()
    topics = new_topics(broker)
    db = tmp_path / "journeys.duckdb"
    send_events(broker, topics, events("m", 25))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shadow), os.environ.get("PYTHONPATH", "")]), "HOME": str(home)}
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "run", "--once", "--db", str(db), "--bootstrap-servers", broker.bootstrap_servers,
         "--topic-tickets", topics["tickets"], "--topic-chats", topics["chats"], "--topic-surveys", topics["surveys"]],
        capture_output=True, text=True, timeout=180, env=env, cwd=Path(__file__).resolve().parent.parent,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    warnings = [line for line in result.stderr.splitlines() if " WARNING " in line]
    assert len(warnings) == 1, result.stderr
    assert "read replica disabled" in warnings[0] and f"duckdb-extension-{missing[0].replace('_', '-')}" in warnings[0], warnings[0]
    assert "download" not in warnings[0], "a missing extension is never fetched from the network at run time"
    assert table(db, "SELECT count(*) FROM events") == [(25,)]


def lake_columns(store: Store, name: str) -> list[str]:
    assert store.replica is not None
    return [r[0] for r in store.replica.con.execute(f"DESCRIBE {LAKE_ALIAS}.{name}").fetchall()]


def test_a_column_change_rebuilds_the_replica(broker, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="cxj")
    topics = new_topics(broker)
    db = tmp_path / "journeys.duckdb"
    send_events(broker, topics, events("r", 30))
    with Store(db) as store:
        runner = MicroBatchRunner(RunConfig(db=db, settings=broker, topics=topics), store)
        try:
            runner.run_once()
        finally:
            runner.close()
        rebuilt_first = store.replica.con.execute(f"SELECT rebuilt_at, fingerprint FROM {LAKE_ALIAS}.replica_state").fetchone()

    import duckdb

    with duckdb.connect(str(db)) as con:  # e.g. an upgrade that adds a column
        con.execute("ALTER TABLE dead_letters ADD COLUMN x_note VARCHAR DEFAULT 'added'")
    caplog.clear()
    with Store(db) as store:
        assert any("full rebuild (table columns changed)" in r.getMessage() for r in caplog.records)
        assert "x_note" in lake_columns(store, "dead_letters")
        rebuilt = store.replica.con.execute(f"SELECT rebuilt_at, fingerprint FROM {LAKE_ALIAS}.replica_state").fetchone()
        assert rebuilt[0] > rebuilt_first[0] and rebuilt[1] != rebuilt_first[1]
        assert store.replica.published_batch_id() == 1
        replica_matches_database(store)

    with duckdb.connect(str(db)) as con:  # and the way back
        con.execute("ALTER TABLE dead_letters DROP COLUMN x_note")
    caplog.clear()
    send_events(broker, topics, events("s", 20))
    with Store(db) as store:
        assert any("full rebuild (table columns changed)" in r.getMessage() for r in caplog.records)
        assert "x_note" not in lake_columns(store, "dead_letters")
        runner = MicroBatchRunner(RunConfig(db=db, settings=broker, topics=topics), store)
        try:
            assert [b.landed for b in runner.run_once()] == [20]
        finally:
            runner.close()
        assert store.replica.published_batch_id() == 2
        replica_matches_database(store)


def read_like_an_analyst(db: Path) -> tuple[str, int, int]:
    """(source, events, published batch) as a separate reader process sees them while the writer runs."""
    code = ("import sys; from pipelines.storage.reader import open_reader; con, source = open_reader(sys.argv[1], wait_s=5); "
            "print(source, con.execute('SELECT count(*) FROM events').fetchone()[0], "
            "con.execute('SELECT coalesce(max(batch_id), 0) FROM pipeline_batches').fetchone()[0])")
    result = subprocess.run([sys.executable, "-c", code, str(db)], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).resolve().parent.parent)
    assert result.returncode == 0, result.stderr
    source, count, batch = result.stdout.split()
    return source, int(count), int(batch)


@pytest.mark.parametrize("what", ["the whole replica directory", "the catalog files"])
def test_a_deleted_replica_is_recreated_not_published_into_the_void(broker, tmp_path, caplog, what):
    caplog.set_level(logging.WARNING, logger="cxj")
    topics = new_topics(broker)
    db = tmp_path / "journeys.duckdb"
    send_events(broker, topics, events("v", 30))
    with Store(db) as store:
        runner = MicroBatchRunner(RunConfig(db=db, settings=broker, topics=topics), store)
        try:
            runner.run_once()
            assert read_like_an_analyst(db) == ("replica", 30, 1)
            lake = lake_dir(db)
            if what == "the whole replica directory":
                shutil.rmtree(lake)
            else:
                for name in ("catalog.sqlite", "catalog.sqlite-wal", "catalog.sqlite-shm"):
                    (lake / name).unlink(missing_ok=True)
            send_events(broker, topics, events("w", 20))
            assert [b.landed for b in runner.run_once()] == [20]
            warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("cxj")
                        and not r.getMessage().startswith("replica: published batches")]  # slow-publish notes on a loaded machine
            assert len(warnings) == 1 and "was deleted or replaced" in warnings[0], warnings
            assert store.replica is not None and store.replica.published_batch_id() == 2
            replica_matches_database(store)
            assert read_like_an_analyst(db) == ("replica", 50, 2)
        finally:
            runner.close()
