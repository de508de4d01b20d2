"""Default locations, in one place (imports nothing, so readers and the CLI's help stay light)."""
from __future__ import annotations

from pathlib import Path

# The database every command uses unless told otherwise (--db, CXJ_DB, `db` in cxj.toml); its
# read replica lives next to it (<db>.lake/, docs/storage.md). Relative to the working directory.
DEFAULT_DB = Path("data/journeys.duckdb")
