"""CX Journeys pipelines.

For analysts: ``from pipelines import connect, query`` (see pipelines/storage/reader.py)::

    from pipelines import query
    query("SELECT * FROM mart_daily_kpis ORDER BY day DESC")   # polars DataFrame

Both work whether or not `cxj run` is writing the database at the moment.
"""
from __future__ import annotations

from typing import Any

__all__ = ["connect", "query"]


def __getattr__(name: str) -> Any:
    # Lazy, so `cxj --help` and the Beam workers do not import DuckDB just to load the package.
    if name in __all__:
        from pipelines.storage import reader

        return getattr(reader, name)
    raise AttributeError(f"module 'pipelines' has no attribute {name!r}")
