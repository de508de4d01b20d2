"""The DuckDB store (results and offsets in one transaction), the read replica readers use, and the locked-down reader."""
