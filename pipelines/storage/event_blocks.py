"""Which blocks of the events table hold each customer's events: a small map kept beside
``events`` (``customer_event_blocks``) so that a batch finds its customers' rows without reading
the whole ``customer_id`` column.

Why: a batch reads the stored events of the customers it touches. Their rows are found by row
id ranges (``Store._touched_rows``), and the ranges came from a scan of the customer column of
every event ever landed: 0.08-0.1 s per batch at 8.3M events, growing with the store. The map
holds one row per (customer, block) pair, the customer by a 64-bit digest of its id and the block
``rowid // ROW_BLOCK``; at 8.3M events it held 1.1M pairs, and looking up a batch's customers in
it took a twentieth of the scan
(docs/performance.md, "A map from customers to the blocks of their events").

Why it can be exact: rows are never deleted from ``events`` and an update (a winning copy)
keeps the row's id, so an event's row id never changes; new rows take the ids from the table's
row count on. The landing adds, in its own transaction, the pairs of the rows it inserts and of
the rows whose customer it changes, and records how many rows of ``events`` the map covers
(``customer_event_blocks_covered``). Where that count is not the table's, the map is not used
(the batch scans the column, as before) and is rebuilt at the next open.
"""
from __future__ import annotations

from typing import Optional

import duckdb

MAP_TABLE = "customer_event_blocks"
COVERED_TABLE = "customer_event_blocks_covered"
# customer_event_blocks.customer_digest of a customer_id column: 64-bit integers are looked up in
# a third of the time of the strings (0.004 against 0.013 s at 1.1M pairs); a digest two
# customers share only adds the other's blocks, which the customer filter then leaves out.
# md5, as event_id_digests: its value is the same in every DuckDB version.
CUSTOMER_DIGEST = "md5_number_lower(customer_id)"


def covered_rows(con: duckdb.DuckDBPyConnection, row_block: int) -> Optional[int]:
    """How many rows of ``events`` the map covers; None when that is not recorded (one row),
    or the map's blocks are not ``row_block`` rows long (made by a version with other blocks)."""
    rows = con.execute(f"SELECT events, block_rows FROM {COVERED_TABLE}").fetchall()
    return int(rows[0][0]) if len(rows) == 1 and rows[0][1] == row_block else None


def rebuild_statements(row_block: int) -> list[str]:
    """The map made anew from every row of ``events`` (at open, when it does not cover them)."""
    return [
        f"DELETE FROM {MAP_TABLE}",
        f"DELETE FROM {COVERED_TABLE}",
        f"""INSERT INTO {MAP_TABLE} SELECT DISTINCT {CUSTOMER_DIGEST}, rowid // {int(row_block)} AS block FROM events
            ORDER BY block""",
        f"INSERT INTO {COVERED_TABLE} SELECT count(*), {int(row_block)} FROM events",
    ]


def blocks_of_batch_customers(con: duckdb.DuckDBPyConnection) -> list[int]:
    """The blocks holding rows of the customers in the temp table ``batch_customers``, sorted.
    Only valid while the map covers the table (``covered_rows`` is its row count)."""
    return [int(row[0]) for row in con.execute(
        f"""SELECT DISTINCT block FROM {MAP_TABLE}
            WHERE customer_digest IN (SELECT {CUSTOMER_DIGEST} FROM batch_customers) ORDER BY block""").fetchall()]


def record_landing(con: duckdb.DuckDBPyConnection, rows_before: int, rows_added: int, row_block: int) -> bool:
    """Inside the landing transaction, after its events are inserted and replaced: adds the
    pairs of the batch's new rows and of the rows a winning copy moved to another customer, and
    moves the covered count on. Returns False (and adds nothing) when the map did not cover the
    ``rows_before`` rows the table held before the insert: it is then rebuilt at the next open.

    Reads the temp tables of the landing: ``batch_events`` (``is_new``, ``customer_id``) and
    ``batch_resolution`` (``replaces``, ``landed_row``: the landed copy's row id). The new rows
    take the ids ``rows_before`` to ``rows_before + rows_added - 1`` in an order DuckDB chooses,
    so each new customer is paired with every block of that stretch (one or two)."""
    if covered_rows(con, row_block) != rows_before:
        return False
    first, last = rows_before // row_block, (rows_before + max(rows_added, 1) - 1) // row_block
    # Pairs already held are left out by looking only at blocks from ``first`` on: the map is
    # written in block order (built sorted, then extended with the newest blocks), so DuckDB
    # skips the rest of it by its min-max index. A moved row's block is older: its pair may be
    # added a second time, which the look-up's DISTINCT absorbs (replacements are rare).
    con.execute(
        f"""INSERT INTO {MAP_TABLE}
            SELECT * FROM (
                SELECT DISTINCT {CUSTOMER_DIGEST}, blocks.block
                FROM batch_events b, range({int(first)}, {int(last + 1)}) blocks(block)
                WHERE b.is_new AND {int(rows_added)} > 0
                UNION
                SELECT {CUSTOMER_DIGEST}, r.landed_row // {int(row_block)}
                FROM batch_events b JOIN batch_resolution r USING (event_id)
                WHERE NOT b.is_new AND r.replaces
            ) found
            EXCEPT SELECT customer_digest, block FROM {MAP_TABLE}
                   WHERE block >= {int(first)} AND customer_digest IN (SELECT {CUSTOMER_DIGEST} FROM batch_events)""")
    con.execute(f"UPDATE {COVERED_TABLE} SET events = {int(rows_before + rows_added)}")
    return True


def events_off_the_map(con: duckdb.DuckDBPyConnection, row_block: int) -> Optional[tuple[int, list[str]]]:
    """How many rows of ``events`` the map does not lead to (their (customer, block) pair is
    missing), and up to five of their customers: the quality check of the map (``cxj check``,
    ``cxj run --check``).

    A missing pair is the one fault the map's own count cannot show: a batch would then read
    that customer's history without the events in that block. None where there is nothing to
    check: no map on ``con`` (the read replica carries none) or a map that does not cover the
    table, which is not used and is rebuilt at the next open. Reads all of ``events``, about as
    long as building the map (1.3 s at 8.3M events)."""
    from pipelines.storage.store import main_tables  # (the store imports this module)

    if not {MAP_TABLE, COVERED_TABLE} <= main_tables(con):
        return None
    if covered_rows(con, row_block) != int(con.execute("SELECT count(*) FROM events").fetchone()[0]):
        return None
    missing, customers = con.execute(
        f"""SELECT count(*), list(DISTINCT customer_id ORDER BY customer_id)[1:5] FROM (
                SELECT customer_id, {CUSTOMER_DIGEST} AS customer_digest, rowid // {int(row_block)} AS block FROM events) e
            ANTI JOIN {MAP_TABLE} USING (customer_digest, block)""").fetchone()
    return int(missing), [str(c) for c in customers or []]
