"""A DuckDB file that is not a store, given to a reader command: one line naming the file and
what it lacks, exit 2, and the file left as it was.

Why: `--db` is typed by hand, and a store whose first `cxj run` was killed before it made its
tables is such a file too. Each reader then stopped on a catalog error of its own, with a
traceback (status, check, sql) or a message about a view it reads (report)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import duckdb
import pytest

from tests.test_config import cxj


def _file_made_elsewhere(path: Path) -> None:
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE TABLE tickets AS SELECT range AS id, 'open' AS state FROM range(10)")


def _file_without_tables(path: Path) -> None:
    duckdb.connect(str(path)).close()


@pytest.mark.parametrize("make", [_file_made_elsewhere, _file_without_tables], ids=["other-tables", "no-tables"])
def test_every_reader_names_a_file_that_is_not_a_store(tmp_path, make):
    db = tmp_path / "not-a-store.duckdb"
    make(db)
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    expected = f"{db} is not a CX Journeys store: it has no events, journeys or pipeline_offsets table"
    for command in (["status"], ["report"], ["check"], ["sql", "SELECT count(*) FROM tickets"]):
        result = cxj(*command, "--db", str(db), cwd=tmp_path)
        said = result.stdout + result.stderr
        assert result.returncode == 2, (command, said)
        assert expected in said and "Traceback" not in said, (command, said)
        assert len(said.strip().splitlines()) == 1, (command, said)
    as_json = cxj("status", "--json", "--db", str(db), cwd=tmp_path)
    report = json.loads(as_json.stdout)
    assert as_json.returncode == 2 and report["level_name"] == "CRIT" and report["reasons"][0].startswith(expected)
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before  # readers never write
    assert not (tmp_path / "not-a-store.duckdb.wal").exists()


def test_a_store_missing_one_table_is_named_by_that_table(tmp_path):
    db = tmp_path / "partial.duckdb"
    with duckdb.connect(str(db)) as con:
        con.execute("CREATE TABLE events (event_id VARCHAR)")
        con.execute("CREATE TABLE journeys (journey_id VARCHAR)")
    result = cxj("status", "--db", str(db), cwd=tmp_path)
    assert result.returncode == 2
    assert f"{db} is not a CX Journeys store: it has no pipeline_offsets table" in result.stdout
