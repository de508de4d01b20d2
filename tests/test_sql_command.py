"""`cxj sql`: formats, errors, stdin, the prompt, and reading while a writer holds the database.

No broker needed: the database is written with `Store` directly (schema, views, a few rows).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from pipelines import cmd_sql
from pipelines.cli import main as cli_main
from pipelines.store import Store

ROOT = Path(__file__).resolve().parent.parent

ROWS = """
INSERT INTO journeys VALUES
 ('j1', 'c1', 'resolved', TIMESTAMPTZ '2025-03-03 09:00:00+00', TIMESTAMPTZ '2025-03-03 11:00:00+00',
  TIMESTAMPTZ '2025-03-03 11:00:00+00', now(), 7200, 600, 0, 0, 0, 1, 1, 0, 5, NULL, true,
  ['email'], ['a1'], ['billing'], ['ticket:t1'], 3, 1),
 ('j2', 'c2', 'open', TIMESTAMPTZ '2025-03-03 10:00:00+00', NULL,
  TIMESTAMPTZ '2025-03-03 10:30:00+00', now(), NULL, NULL, 1, 1, 1, 2, 1, 0, NULL, NULL, false,
  ['chat', 'email'], ['a2', 'a3'], ['support', 'tech'], ['chat:ch2'], 4, 1);
INSERT INTO pipeline_batches VALUES (1, now(), now(), 0.1, 0.05, 0.03, 0.01, 7, 7, 0, 0, 2, 2,
  NULL, NULL, NULL, NULL, '[]');
"""


@pytest.fixture
def small_db(tmp_path: Path, monkeypatch) -> Path:
    db = tmp_path / "journeys.duckdb"
    monkeypatch.setenv("CXJ_REPLICA", "0")  # these tests read the file itself, except where they say so
    with Store(db) as store:
        store.con.execute(ROWS)
    monkeypatch.delenv("CXJ_REPLICA")
    return db


def cxj(*args: str) -> int:
    return cli_main(["sql", *args])


def test_table_format_is_the_default(small_db, capsys):
    assert cxj("--db", str(small_db), "SELECT journey_id, status FROM journeys ORDER BY 1") == 0
    out = capsys.readouterr().out
    assert "journey_id" in out and "j1" in out and "resolved" in out and "open" in out


def test_table_says_when_rows_are_left_out(small_db, capsys):
    assert cxj("--db", str(small_db), "--max-rows", "1", "FROM journeys") == 0
    assert "first 1 rows shown" in capsys.readouterr().out


def test_csv_and_json(small_db, capsys):
    assert cxj("--db", str(small_db), "--format", "csv", "SELECT journey_id, csat FROM journeys ORDER BY 1") == 0
    assert capsys.readouterr().out.splitlines() == ["journey_id,csat", "j1,5", "j2,"]
    assert cxj("--db", str(small_db), "--format", "json",
               "SELECT journey_id, channels, started_at FROM journeys ORDER BY 1") == 0
    doc = json.loads(capsys.readouterr().out)
    assert [d["journey_id"] for d in doc] == ["j1", "j2"]
    assert doc[1]["channels"] == ["chat", "email"] and doc[0]["started_at"].startswith("2025-03-03")


def test_parquet_needs_output_and_writes_it(small_db, tmp_path, capsys):
    assert cxj("--db", str(small_db), "--format", "parquet", "FROM journeys") == 1
    assert "--output" in capsys.readouterr().err
    target = tmp_path / "kpis.parquet"
    assert cxj("--db", str(small_db), "--format", "parquet", "--output", str(target), "FROM mart_daily_kpis") == 0
    assert duckdb.sql(f"SELECT sum(journeys) FROM '{target}'").fetchone()[0] == 2


def test_csv_to_a_file(small_db, tmp_path):
    target = tmp_path / "out.csv"
    assert cxj("--db", str(small_db), "--format", "csv", "-o", str(target), "SELECT 1 AS x") == 0
    assert target.read_text().split() == ["x", "1"]


def test_errors_have_exit_codes(small_db, tmp_path, capsys):
    assert cxj("--db", str(small_db), "SELECT * FROM no_such_table") == 1
    assert "no_such_table" in capsys.readouterr().err
    assert cxj("--db", str(tmp_path / "missing.duckdb"), "SELECT 1") == 2
    assert "does not exist" in capsys.readouterr().err


def test_query_from_stdin(small_db):
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", "sql", "--db", str(small_db), "--format", "csv"],
                          input="SELECT count(*) AS n FROM journeys", capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["n", "2"]


def test_prompt(small_db, monkeypatch, capsys):
    lines = iter([".tables", "SELECT journey_id", "FROM journeys ORDER BY 1;", ".format csv",
                  "SELECT 42 AS answer;", ".quit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    con = duckdb.connect(str(small_db), read_only=True)
    args = type("Args", (), {"db": small_db, "format": "table", "max_rows": 100})()
    try:
        assert cmd_sql.repl(con, "database", args) == 0
    finally:
        con.close()
    out = capsys.readouterr().out
    assert "mart_daily_kpis" in out and "j2" in out and "answer\n42" in out


WRITER = """
import sys
from pipelines.store import Store
store = Store(sys.argv[1])          # holds the file and publishes the replica on start
print("ready", flush=True)
sys.stdin.read()
store.close()
"""


def test_reads_the_replica_while_a_writer_holds_the_database(small_db):
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(small_db)], cwd=ROOT, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert writer.stdout.readline().strip() == "ready", writer.stderr.read()
        with pytest.raises(duckdb.IOException):  # DuckDB: nobody else may open the file now
            duckdb.connect(str(small_db), read_only=True)
        done = subprocess.run(
            [sys.executable, "-m", "pipelines.cli", "sql", "--db", str(small_db), "--format", "csv",
             "SELECT (SELECT count(*) FROM journeys) AS journeys, (SELECT sum(journeys) FROM mart_daily_kpis) AS kpi,"
             " (SELECT published_batch_id FROM replica_state) AS batch"],
            capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["journeys,kpi,batch", "2,2,1"]
    finally:
        writer.stdin.close()
        writer.wait(timeout=30)
