"""Read access for analysts, ops commands and notebooks — also while the pipeline runs.

    from pipelines import connect, query
    df = query("SELECT * FROM mart_daily_kpis ORDER BY day DESC")   # a polars DataFrame
    con = connect("data/journeys.duckdb")                             # a DuckDB connection
    con.sql("FROM mart_open_backlog ORDER BY bucket_order").show()

`connect(db)` returns a read-only DuckDB connection exposing the same names either way:
the landing tables (events, journeys, journey_events, dead_letters, pipeline_offsets,
pipeline_batches) and the views of sql/staging, sql/core and sql/marts.

* Pipeline not running: the ``--db`` file itself, opened read-only. While such a connection is
  open the pipeline cannot start (DuckDB: one writer, no readers beside it) — close it, or use
  `query()`, which closes its connection at once.
* Pipeline running (it holds the file): the DuckLake read replica the pipeline publishes after
  every batch (``<db>.lake/``, see pipelines/replica.py), attached read-only. Every statement
  sees the latest published batch, whole: never half a batch.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import duckdb

from pipelines.replica import LAKE_ALIAS, STATE_TABLE, attach_sql, catalog_path, load_extensions, ReplicaError
from pipelines.store import StoreError

if TYPE_CHECKING:
    import polars

DEFAULT_DB = Path("data/journeys.duckdb")


class ReplicaNotReady(StoreError):
    """The pipeline holds the database but has not published its replica yet."""


def _is_lock_error(exc: duckdb.Error) -> bool:
    text = str(exc).lower()
    return "lock" in text and ("conflicting" in text or "could not set" in text)


def open_reader(db: Path | str = DEFAULT_DB, wait_s: float = 10.0) -> tuple[duckdb.DuckDBPyConnection, str]:
    """(connection, source) where source is 'database' or 'replica'; see `connect`."""
    path = Path(db)
    deadline = time.monotonic() + wait_s
    while True:
        if not path.exists():
            raise StoreError(f"{path} does not exist yet: run `cxj run --once` (or `cxj demo`) first")
        try:
            con = duckdb.connect(str(path), read_only=True)
            con.execute("SET TimeZone = 'UTC'")
            return con, "database"
        except duckdb.Error as exc:
            if not _is_lock_error(exc):
                raise StoreError(f"cannot open {path} read-only: {str(exc).splitlines()[0]}") from None
        try:
            return connect_replica(path), "replica"
        except ReplicaNotReady:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.2)


def connect(db: Path | str = DEFAULT_DB, wait_s: float = 10.0) -> duckdb.DuckDBPyConnection:
    """A read-only connection to the journey tables and marts of ``db``.

    Opens the database file when it is free; while the pipeline holds it, attaches the read
    replica instead (waiting up to ``wait_s`` seconds for a just-started pipeline to publish it).
    """
    return open_reader(db, wait_s)[0]


def connect_replica(db: Path | str = DEFAULT_DB) -> duckdb.DuckDBPyConnection:
    """A read-only connection to the DuckLake replica of ``db`` (whether or not the pipeline runs)."""
    catalog = catalog_path(db)
    if not catalog.exists():
        raise ReplicaNotReady(
            f"{db} is in use by the pipeline and its read replica {catalog} does not exist yet "
            "(the pipeline creates it when it starts; is it an older version, or run with CXJ_REPLICA=0?)"
        )
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        load_extensions(con)
        con.execute(attach_sql(db, read_only=True))
        con.execute(f"USE {LAKE_ALIAS}")
        con.execute(f"SELECT published_batch_id FROM {STATE_TABLE}").fetchall()
    except duckdb.CatalogException:
        con.close()
        raise ReplicaNotReady(f"the read replica {catalog} is being created; try again in a moment") from None
    except (duckdb.Error, ReplicaError) as exc:
        con.close()
        if "creating a new ducklake is explicitly disabled" in str(exc).lower():  # catalog file, no lake yet
            raise ReplicaNotReady(f"the read replica {catalog} is being created; try again in a moment") from None
        raise StoreError(f"cannot open the read replica {catalog}: {str(exc).splitlines()[0]}") from None
    return con


def published_batch(con: duckdb.DuckDBPyConnection) -> Optional[int]:
    """The batch a replica connection currently shows (None on a database-file connection)."""
    try:
        return int(con.execute(f"SELECT published_batch_id FROM {STATE_TABLE}").fetchone()[0])
    except duckdb.CatalogException:
        return None


def query(sql: str, db: Path | str = DEFAULT_DB) -> "polars.DataFrame":
    """Runs one query and returns a polars DataFrame; the connection is closed right away."""
    con = connect(db)
    try:
        relation = con.sql(sql)
        if relation is None:
            raise ValueError("the statement returns no rows (use connect() for statements without results)")
        return relation.pl()
    finally:
        con.close()
