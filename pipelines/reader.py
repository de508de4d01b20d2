"""Read access for analysts, ops commands and notebooks.

`connect(db)` returns a read-only DuckDB connection that exposes the journey tables and
views whether or not the pipeline is running.
"""
from __future__ import annotations

from pathlib import Path

import duckdb

from pipelines.store import StoreError


def connect(db: Path | str = Path("data/journeys.duckdb")) -> duckdb.DuckDBPyConnection:
    path = Path(db)
    if not path.exists():
        raise StoreError(f"{path} does not exist yet: run `cxj run --once` (or `cxj demo`) first")
    try:
        con = duckdb.connect(str(path), read_only=True)
    except duckdb.Error as exc:
        raise StoreError(f"cannot open {path} read-only: {str(exc).splitlines()[0]}") from None
    con.execute("SET TimeZone = 'UTC'")
    return con
