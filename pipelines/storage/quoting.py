"""Quoting for the few SQL texts that must embed a value or a name (DuckDB has no parameters
for file paths in COPY/ATTACH/LOAD, for identifiers, or for COMMENT ON texts).

One home for both helpers: every interpolation tests/test_security.py reviews goes through them.
"""
from __future__ import annotations


def sql_literal(text: str) -> str:
    """``text`` as a SQL string literal (single quotes doubled)."""
    return "'" + text.replace("'", "''") + "'"


def ident(name: str) -> str:
    """``name`` as a quoted SQL identifier (double quotes doubled)."""
    return '"' + name.replace('"', '""') + '"'
