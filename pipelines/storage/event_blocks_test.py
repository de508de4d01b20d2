"""The map from customers to the blocks of their events rows (event_blocks.py), on real stores:
the rows it picks are exactly the ones a plain customer filter picks, before and inside a
landing's transaction; it is rebuilt when it does not cover the table, and is not used then."""
from __future__ import annotations

import logging
from pathlib import Path

import duckdb
import pytest

from pipelines.storage import store as store_module
from pipelines.storage.event_blocks import MAP_TABLE, covered_rows, record_landing
from pipelines.storage.store import ROW_BLOCK, Store

EVENT_COLUMNS = "event_type, occurred_at, customer_id, payload, source_topic, source_partition, source_offset, batch_id, landed_at"
PLAIN = "customer_id IN (SELECT customer_id FROM batch_customers)"


def insert_events(con: duckdb.DuckDBPyConnection, rows: int, customer_sql: str, prefix: str = "e") -> None:
    con.execute(f"""INSERT INTO events (event_id, {EVENT_COLUMNS})
                    SELECT '{prefix}' || i, 'ticket.created', TIMESTAMPTZ '2026-01-01 00:00:00+00', {customer_sql},
                           '{{}}', 't', 0, i, 1, now()
                    FROM range({rows}) t(i)""")


def events_in_five_blocks(con: duckdb.DuckDBPyConnection) -> None:
    """614k events written as something other than the landing would: customers of 1,000
    consecutive rows ('c0', 'c1', ...) and 'spread', with a row in every block."""
    insert_events(con, 5 * ROW_BLOCK, "CASE WHEN i % 100000 = 7 THEN 'spread' ELSE 'c' || (i // 1000) END")
    con.execute("INSERT INTO event_id_digests SELECT md5_number_lower(event_id) FROM events")


def reopened_with_five_blocks(db: Path) -> Store:
    """A store whose events were written in five blocks around the landing, opened again: the
    open maps them."""
    with Store(db) as store:
        events_in_five_blocks(store.con)
    return Store(db)


def picked(con: duckdb.DuckDBPyConnection, condition: str) -> list[str]:
    return [r[0] for r in con.execute(f"SELECT event_id FROM events WHERE {condition} ORDER BY 1").fetchall()]


def test_the_map_is_built_at_open_and_picks_exactly_the_touched_customers_rows(tmp_path, caplog):
    db = tmp_path / "blocks.duckdb"
    with Store(db) as store:
        assert covered_rows(store.con, ROW_BLOCK) == 0  # a new store: the map covers its empty table
        events_in_five_blocks(store.con)
        assert covered_rows(store.con, ROW_BLOCK) == 0  # written around the landing: no longer covered
    with caplog.at_level(logging.INFO, logger="cxj.store"):
        store = Store(db)
    try:
        assert "mapping the customers of 614400 events to their row blocks" in caplog.text
        con = store.con
        assert covered_rows(con, ROW_BLOCK) == 5 * ROW_BLOCK
        assert con.execute(f"SELECT count(*) FROM {MAP_TABLE} WHERE customer_digest = md5_number_lower('spread')").fetchone() == (5,)
        con.execute("""CREATE TEMP TABLE batch_customers AS
                       SELECT * FROM (VALUES ('c0'), ('c300'), ('nobody')) t(customer_id)""")
        store._start_lookups()
        condition = store._touched_rows("events")
        # c300's block, whole, from the map (a scan would have given 300000-300999)
        assert f"rowid BETWEEN {2 * ROW_BLOCK} AND {3 * ROW_BLOCK - 1}" in condition
        assert picked(con, condition) == picked(con, PLAIN) and len(picked(con, PLAIN)) == 999 + 999
    finally:
        store.close()
    with caplog.at_level(logging.INFO, logger="cxj.store"):
        caplog.clear()
        Store(db).close()
    assert "mapping" not in caplog.text  # covered: not built again


def test_a_landing_keeps_the_map_exact_for_new_rows_and_rows_moved_to_another_customer(tmp_path, monkeypatch):
    """What a landing does, inside its transaction: new rows (whose row ids are far past the
    table's until it commits), and a landed row a winning copy gives to another customer.
    (Ranges over most of this small table are used here too: the map is what is tested.)"""
    monkeypatch.setattr(store_module, "WIDEST_RANGES_SHARE", 1.0)
    db = tmp_path / "landing.duckdb"
    store = reopened_with_five_blocks(db)
    try:
        con = store.con
        rows = 5 * ROW_BLOCK
        # the batch: new events of c300 (block 2) and new-c, and a copy of e5 (c0's, in block 0) that
        # moves it to c599 (block 4); c0 is touched too, as the old customer of a replaced event
        con.execute("""CREATE TEMP TABLE batch_customers AS
                       SELECT * FROM (VALUES ('c300'), ('c599'), ('new-c'), ('c0')) t(customer_id)""")
        con.execute("""CREATE TEMP TABLE batch_events AS SELECT * FROM (VALUES
                       ('n1-0', 'c300', true), ('n2-0', 'new-c', true), ('e5', 'c599', false)) t(event_id, customer_id, is_new)""")
        con.execute("CREATE TEMP TABLE batch_resolution AS SELECT 'e5' AS event_id, true AS replaces, 5::BIGINT AS landed_row")
        store._start_lookups()
        assert "rowid BETWEEN 0 AND" in store._touched_rows("events")
        con.execute("BEGIN TRANSACTION")
        insert_events(con, 1, "'c300'", prefix="n1-")
        insert_events(con, 1, "'new-c'", prefix="n2-")
        con.execute("UPDATE events SET customer_id = 'c599' WHERE event_id = 'e5'")
        assert record_landing(con, rows, 2, ROW_BLOCK)
        assert covered_rows(con, ROW_BLOCK) == rows + 2
        reused = store._touched_rows("events", again=True)
        store._start_lookups()
        fresh = store._touched_rows("events")  # looked up inside the transaction, from the map
        expected = picked(con, PLAIN)
        assert {"n1-0", "n2-0", "e5"} <= set(expected)
        assert picked(con, reused) == expected and picked(con, fresh) == expected
        con.execute("COMMIT")
        # committed: the new rows have their real ids, in the blocks the map was given; each
        # customer alone finds its rows (c599 its new event in block 0, new-c its first one)
        for customer in ("c599", "new-c", "c300", "c0"):
            con.execute("DELETE FROM batch_customers")
            con.execute("INSERT INTO batch_customers VALUES (?)", [customer])
            store._start_lookups()
            assert picked(con, store._touched_rows("events")) == picked(con, PLAIN), customer
        true_pairs = (f"SELECT DISTINCT md5_number_lower(customer_id), rowid // {ROW_BLOCK} FROM events "
                      f"EXCEPT SELECT * FROM {MAP_TABLE}")
        assert con.execute(f"SELECT count(*) FROM ({true_pairs})").fetchone() == (0,)
    finally:
        store.close()


def test_ranges_are_widened_only_where_rows_may_have_been_written_since_the_look_up(tmp_path):
    """Before the landing, the ranges stay plain (DuckDB then scans only their row groups); in
    a transaction, or once rows were added since the look-up, they take in every row since."""
    db = tmp_path / "widened.duckdb"
    store = reopened_with_five_blocks(db)
    try:
        con = store.con
        con.execute("CREATE TEMP TABLE batch_customers AS SELECT * FROM (VALUES ('c0'), ('c300')) t(customer_id)")
        store._start_lookups()
        looked_up = store._touched_rows("events")
        assert "rowid >=" not in looked_up and "rowid >=" not in store._touched_rows("events", again=True)
        assert picked(con, looked_up) == picked(con, PLAIN)
        con.execute("BEGIN TRANSACTION")
        assert f"rowid >= {5 * ROW_BLOCK}" in store._touched_rows("events", again=True)  # nothing written yet
        insert_events(con, 3, "'c300'", prefix="late-")  # ids far past the table's until committed
        assert "late-2" in picked(con, store._touched_rows("events", again=True))
        con.execute("COMMIT")
        # committed since the look-up: no transaction open, but the table holds more rows
        reused = store._touched_rows("events", again=True)
        assert f"rowid >= {5 * ROW_BLOCK}" in reused
        assert {"late-0", "late-1", "late-2"} <= set(picked(con, reused)) and picked(con, reused) == picked(con, PLAIN)
    finally:
        store.close()


def test_a_map_that_does_not_cover_the_table_is_not_used_nor_extended(tmp_path, monkeypatch):
    db = tmp_path / "stale.duckdb"
    store = reopened_with_five_blocks(db)
    try:
        con = store.con
        insert_events(con, 10, "'c0'", prefix="stray-")  # past the map, written around the landing
        con.execute("CREATE TEMP TABLE batch_customers AS SELECT 'c0' AS customer_id")
        looked_up = []
        monkeypatch.setattr(store_module, "row_ranges", lambda stretches: looked_up.append(stretches) or stretches)
        store._start_lookups()
        condition = store._touched_rows("events")
        assert [sorted(found) for found in looked_up] == [[(0, 999), (5 * ROW_BLOCK, 5 * ROW_BLOCK + 9)]]  # the column, not the map
        assert "stray-3" in picked(con, condition) and picked(con, condition) == picked(con, PLAIN)
        con.execute("CREATE TEMP TABLE batch_events AS SELECT 'x' AS event_id, 'c0' AS customer_id, true AS is_new")
        con.execute("CREATE TEMP TABLE batch_resolution AS SELECT 'x' AS event_id, false AS replaces, 0::BIGINT AS landed_row")
        assert not record_landing(con, 5 * ROW_BLOCK + 10, 1, ROW_BLOCK)
        assert covered_rows(con, ROW_BLOCK) == 5 * ROW_BLOCK
    finally:
        store.close()
    with Store(db) as store:  # rebuilt at open
        assert covered_rows(store.con, ROW_BLOCK) == 5 * ROW_BLOCK + 10


@pytest.mark.parametrize("damage", ["DELETE FROM customer_event_blocks_covered",
                                    "INSERT INTO customer_event_blocks_covered VALUES (100, 122880)",
                                    "UPDATE customer_event_blocks_covered SET block_rows = 1000"])
def test_a_missing_doubled_or_foreign_count_makes_the_map_be_built_again(tmp_path, damage):
    """The count is all that says the map holds: without it (or with two), or with blocks of
    another size (a map made by a version with other blocks), it is built anew, not trusted."""
    db = tmp_path / "count.duckdb"
    with Store(db) as store:
        insert_events(store.con, 100, "'c' || (i % 7)")
    with Store(db) as store:
        assert covered_rows(store.con, ROW_BLOCK) == 100
        store.con.execute(f"DELETE FROM {MAP_TABLE}")  # what a rebuild restores
        store.con.execute(damage)
        assert covered_rows(store.con, ROW_BLOCK) is None
    with Store(db) as store:
        assert covered_rows(store.con, ROW_BLOCK) == 100
        assert store.con.execute(f"SELECT count(*) FROM {MAP_TABLE}").fetchone() == (7,)
