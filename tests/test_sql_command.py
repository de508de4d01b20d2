"""`cxj sql`: every format x every column type x stdout/file, multi-statement input, dot-commands,
the prompt through a real pseudo-terminal, and reading while a writer holds the database.

No broker needed: the database is written with `Store` directly (schema, views, a few rows).
"""
from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import termios
import time
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from pipelines.cli.main import main as cli_main
from pipelines.cli.sql_output import FORMATS, display_width, rounded_float
from pipelines.cli.sql_shell import is_complete, split_statements
from pipelines.storage.store import Store

ROOT = Path(__file__).resolve().parent.parent
CXJ = [sys.executable, "-m", "pipelines.cli", "sql"]

ROWS = """
INSERT INTO journeys VALUES
 ('j1', 'c1', 'resolved', TIMESTAMPTZ '2025-03-03 09:00:00+00', TIMESTAMPTZ '2025-03-03 11:00:00+00',
  TIMESTAMPTZ '2025-03-03 11:00:00+00', now(), 7200, 600, 0, 0, 0, 1, 1, 0, 5, NULL, true,
  ['email'], ['a1'], ['billing'], ['ticket:t1'], 3, 1),
 ('j2', 'c2', 'open', TIMESTAMPTZ '2025-03-03 10:00:00+00', NULL,
  TIMESTAMPTZ '2025-03-03 10:30:00+00', now(), NULL, NULL, 1, 1, 1, 2, 1, 0, NULL, NULL, false,
  ['chat', 'email'], ['a2', 'a3'], ['support', 'tech'], ['chat:ch2'], 4, 1),
 ('j3 "ü, 日本"', 'c3', 'open', TIMESTAMPTZ '2025-03-04 10:00:00+00', NULL,
  TIMESTAMPTZ '2025-03-04 10:30:00+00', now(), NULL, 12.5, 0, 0, 0, 1, 1, 0, NULL, 7, false,
  ['sms, "quoted"'], [], [], ['chat:x|y'], 2, 1);
INSERT INTO pipeline_batches VALUES (1, now(), now(), 0.1, 0.05, 0.03, 0.01, 7, 7, 0, 0, 2, 2,
  NULL, NULL, NULL, NULL, '[]');
"""

# Every kind of column an analyst meets, hostile values included.
ALL_TYPES = """
SELECT 1::INTEGER AS i, 170141183460469231731687303715884105727::HUGEINT AS huge, 2/3 AS ratio,
       'nan'::DOUBLE AS nan, 1.50::DECIMAL(5, 2) AS dec, true AS flag, NULL::VARCHAR AS nothing,
       'ü 日本 🙂 a,b "q" | x' AS unicode, E'two\\nlines\\ttab\\x1b[31m' AS controls,
       TIMESTAMPTZ '2025-03-03 09:00:00+02' AS ts, TIMESTAMP '2025-03-03 09:00:00' AS ts_naive,
       DATE '2025-03-03' AS d, TIME '10:11:12' AS t, INTERVAL 90 MINUTE AS iv,
       [1, NULL, 3] AS ints, ['a', 'b,c'] AS strs, {'k': 'v', 'n': [1, 2]} AS struct,
       MAP(['x', 'y'], [1, 2]) AS m, '\\xAA\\x00A'::BLOB AS blob, '00000000-0000-0000-0000-000000000001'::UUID AS id,
       [{'a': TIMESTAMPTZ '2025-01-01 00:00:00+00'}] AS nested_ts
"""
ALL_TYPES_ONE_LINE = " ".join(ALL_TYPES.split())


@pytest.fixture
def small_db(tmp_path: Path, monkeypatch) -> Path:
    db = tmp_path / "journeys.duckdb"
    monkeypatch.setenv("CXJ_REPLICA", "0")  # these tests read the file itself, except where they say so
    with Store(db) as store:
        store.con.execute(ROWS)
    monkeypatch.delenv("CXJ_REPLICA")
    Store(db).close()  # publishes the read replica, which readers (the prompt too) read
    return db


def cxj(*args: str) -> int:
    return cli_main(["sql", *args])


def cxj_process(db: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CXJ, "--db", str(db), *args], input=None if stdin is None else stdin.encode(),
                          capture_output=True, cwd=ROOT, timeout=60)


# ---------------------------------------------------------------- formats


def parse(fmt: str, data: bytes) -> list[dict]:
    """Reads a result back in the format it was written in (rows as dicts of text or JSON)."""
    if fmt == "csv":
        return list(csv.DictReader(io.StringIO(data.decode())))
    if fmt == "json":
        return json.loads(data)
    if fmt == "jsonl":
        return [json.loads(line) for line in data.decode().splitlines()]
    if fmt == "parquet":
        return pq.read_table(io.BytesIO(data)).to_pylist()
    if fmt == "markdown":
        lines = data.decode().splitlines()
        names = [c.strip() for c in lines[0].strip("|").split(" | ")]
        return [dict(zip(names, re.split(r"(?<!\\)\|", line.strip()[1:-1]))) for line in lines[2:]]
    if fmt == "line":
        return [dict(line.strip().split(" = ", 1) for line in block.splitlines()) for block in data.decode().split("\n\n")]
    raise AssertionError(fmt)


@pytest.mark.parametrize("fmt", FORMATS)
def test_readme_export_works_in_every_format_on_stdout_and_in_a_file(small_db, tmp_path, fmt):
    """The README's `cxj sql --format csv "FROM journeys WHERE status = 'open'" > open.csv`, list columns
    and all, in every format; stdout (a pipe) and --output give the same bytes."""
    query = "FROM journeys WHERE status = 'open' ORDER BY journey_id"
    piped = cxj_process(small_db, "--format", fmt, query)
    assert piped.returncode == 0, piped.stderr
    target = tmp_path / f"open.{fmt}"
    to_file = cxj_process(small_db, "--format", fmt, "-o", str(target), query)
    assert to_file.returncode == 0 and to_file.stdout == b"", to_file.stderr
    if fmt == "parquet":
        assert pq.read_table(target).to_pylist() == pq.read_table(io.BytesIO(piped.stdout)).to_pylist()
    else:
        assert target.read_bytes() == piped.stdout
    if fmt == "table":
        text = piped.stdout.decode()
        assert "j2" in text and "3 rows" not in text and "2 rows" in text and '["chat", "email"]' in text
        return
    rows = parse(fmt, piped.stdout)
    assert [str(r["journey_id"]).strip() for r in rows] == ["j2", 'j3 "ü, 日本"'] if fmt != "markdown" else len(rows) == 2
    channels = rows[0]["channels"]
    assert channels in (["chat", "email"], '["chat", "email"]') or channels.strip() == '["chat", "email"]'


@pytest.mark.parametrize("fmt", [f for f in FORMATS if f != "parquet"])
def test_every_column_type_in_every_text_format(small_db, tmp_path, fmt, capsys):
    target = tmp_path / f"types.{fmt}"
    assert cxj("--db", str(small_db), "--format", fmt, ALL_TYPES) == 0
    printed = capsys.readouterr().out
    assert cxj("--db", str(small_db), "--format", fmt, "-o", str(target), ALL_TYPES) == 0
    assert target.read_text(encoding="utf-8") == printed  # one writer: the same text either way
    if fmt in ("table", "markdown", "line"):
        newline = "<br>" if fmt == "markdown" else "\\n"
        assert "\x1b" not in printed and f"two{newline}lines\\ttab\\x1B[31m" in printed  # no terminal escapes
        assert "2025-03-03 07:00:00+00:00" in printed and "ü 日本 🙂" in printed and "NULL" in printed
    if fmt == "table":
        assert "0.6667" in printed and "0.6666666" not in printed  # rounded for reading
        widths = {display_width(line) for line in printed.splitlines()[:-1]}
        assert len(widths) == 1, widths  # wide characters keep the box aligned
        return
    if fmt == "markdown" or fmt == "line":
        return
    row = parse(fmt, printed.encode())[0]
    expected = {
        "i": "1", "ratio": repr(2 / 3), "dec": "1.50", "flag": "true", "nothing": "", "unicode": 'ü 日本 🙂 a,b "q" | x',
        "controls": "two\nlines\ttab\x1b[31m", "ts": "2025-03-03 07:00:00+00:00", "ts_naive": "2025-03-03 09:00:00",
        "d": "2025-03-03", "t": "10:11:12", "iv": "01:30:00", "ints": "[1, null, 3]", "strs": '["a", "b,c"]',
        "struct": '{"k": "v", "n": [1, 2]}', "m": '{"x": 1, "y": 2}', "blob": "\\xAA\\x00A",
        "id": "00000000-0000-0000-0000-000000000001", "huge": "170141183460469231731687303715884105727",
        "nested_ts": '[{"a": "2025-01-01T00:00:00+00:00"}]',
    }
    if fmt == "csv":
        assert {k: row[k] for k in expected} == expected and row["nan"] == "nan"
    else:  # json, jsonl: real JSON types
        assert row["i"] == 1 and row["ratio"] == 2 / 3 and row["nan"] is None and row["dec"] == 1.5
        assert row["flag"] is True and row["nothing"] is None and row["ints"] == [1, None, 3]
        assert row["struct"] == {"k": "v", "n": [1, 2]} and row["m"] == {"x": 1, "y": 2}
        assert row["ts"] == "2025-03-03T07:00:00+00:00" and row["controls"] == expected["controls"]
        assert row["nested_ts"] == [{"a": "2025-01-01T00:00:00+00:00"}] and row["huge"] == int(expected["huge"])


def test_every_column_type_in_parquet_on_stdout_and_in_a_file(small_db, tmp_path):
    target = tmp_path / "types.parquet"
    assert cxj_process(small_db, "--format", "parquet", "-o", str(target), ALL_TYPES).returncode == 0
    piped = cxj_process(small_db, "--format", "parquet", ALL_TYPES)
    assert piped.returncode == 0, piped.stderr
    from_file, from_pipe = pq.read_table(target), pq.read_table(io.BytesIO(piped.stdout))
    assert from_file.drop_columns(["nan"]).equals(from_pipe.drop_columns(["nan"]))  # (NaN != NaN)
    row = from_file.to_pylist()[0]
    assert row["ints"] == [1, None, 3] and row["struct"] == {"k": "v", "n": [1, 2]} and row["nothing"] is None
    assert row["iv"] == "01:30:00"  # Parquet has no interval type: kept as its text
    assert str(from_file.schema.field("ts").type) == "timestamp[us, tz=UTC]"
    assert duckdb.sql(f"SELECT unicode, strs FROM '{target}'").fetchone() == ('ü 日本 🙂 a,b "q" | x', ["a", "b,c"])


def test_parquet_to_a_terminal_is_refused_with_one_line(small_db, capsys, monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    assert cxj("--db", str(small_db), "--format", "parquet", "SELECT 1") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "parquet is binary" in err[0]


def test_table_rounds_floats_for_reading():
    assert [rounded_float(v) for v in (2 / 3, 15660.0, 4.35, 1234567.891, 0.000123456, 0.0, -2.499, 3.8000000000000003)] == [
        "0.6667", "15660.0", "4.35", "1234567.89", "0.0001235", "0.0", "-2.5", "3.8"]


def test_table_says_when_rows_are_left_out(small_db, capsys):
    assert cxj("--db", str(small_db), "--max-rows", "1", "FROM journeys") == 0
    assert "first 1 rows shown" in capsys.readouterr().out


def test_csv_and_json(small_db, capsys):
    assert cxj("--db", str(small_db), "--format", "csv", "SELECT journey_id, csat FROM journeys ORDER BY 1 LIMIT 2") == 0
    assert capsys.readouterr().out.splitlines() == ["journey_id,csat", "j1,5", "j2,"]
    assert cxj("--db", str(small_db), "--format", "json",
               "SELECT journey_id, channels, started_at FROM journeys ORDER BY 1") == 0
    doc = json.loads(capsys.readouterr().out)
    assert [d["journey_id"] for d in doc] == ["j1", "j2", 'j3 "ü, 日本"']
    assert doc[1]["channels"] == ["chat", "email"] and doc[0]["started_at"] == "2025-03-03T09:00:00+00:00"


def test_empty_results_in_every_format(small_db, tmp_path):
    for fmt in FORMATS:
        target = tmp_path / f"empty.{fmt}"
        assert cxj("--db", str(small_db), "--format", fmt, "-o", str(target), "SELECT * FROM journeys WHERE false") == 0
        data = target.read_bytes()
        if fmt == "parquet":
            assert pq.read_table(target).num_rows == 0 and "channels" in pq.read_table(target).column_names
        elif fmt == "json":
            assert json.loads(data) == []
        elif fmt == "csv":
            assert data.decode().splitlines()[0].startswith("journey_id,customer_id")
        elif fmt == "table":
            assert "0 rows" in data.decode()


# ---------------------------------------------------------------- errors and files


def test_errors_have_exit_codes_and_one_line(small_db, tmp_path, capsys):
    assert cxj("--db", str(small_db), "SELECT * FROM no_such_table") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no_such_table" in err[0]
    assert cxj("--db", str(tmp_path / "missing.duckdb"), "SELECT 1") == 2
    assert "does not exist" in capsys.readouterr().err
    assert cxj("--db", str(small_db), "SELEC 1") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "syntax error" in err[0] and "(line 1)" in err[0]


def test_a_failed_query_leaves_no_file(small_db, tmp_path, capsys):
    for fmt in FORMATS:
        target = tmp_path / f"never.{fmt}"
        assert cxj("--db", str(small_db), "--format", fmt, "-o", str(target), "SELECT 1 AS ok; SELECT * FROM nope") == 1
        assert not target.exists()
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".never")] == []  # no temp files left
    existing = tmp_path / "keep.csv"
    existing.write_text("old\n")
    assert cxj("--db", str(small_db), "--format", "csv", "-o", str(existing), "SELECT * FROM nope") == 1
    assert existing.read_text() == "old\n"  # not truncated by a failed query
    assert cxj("--db", str(small_db), "-o", str(tmp_path / "no" / "dir.csv"), "SELECT 1") == 2
    assert "cannot write" in capsys.readouterr().err


def test_every_statement_shows_its_result_or_error(small_db, capsys):
    code = cxj("--db", str(small_db), "--format", "csv",
               "SELECT 1 AS a; SELECT 'x;y' AS b -- a ; in a comment\n; SELECT * FROM nope; /* ; */ SELECT 3 AS c;")
    assert code == 1  # one statement failed
    captured = capsys.readouterr()
    assert captured.out.splitlines() == ["a", "1", "b", "x;y", "c", "3"]
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("Error: statement 3: ") and "nope" in err[0]
    assert cxj("--db", str(small_db), "--format", "csv", "SELECT 1 AS one; SELECT 2 AS two;") == 0
    assert capsys.readouterr().out.split() == ["one", "1", "two", "2"]


@pytest.mark.parametrize("text, statements", [
    ("SELECT 1; SELECT 2;", ["SELECT 1;", "SELECT 2;"]),
    ("SELECT ';' AS s; SELECT 2", ["SELECT ';' AS s;", "SELECT 2"]),
    ("SELECT 'it''s; ok'", ["SELECT 'it''s; ok'"]),
    ('SELECT 1 AS "a;b";', ['SELECT 1 AS "a;b";']),
    ("-- only a comment;\n", []),
    ("SELECT 1; -- trailing ; comment", ["SELECT 1;"]),
    ("/* a /* nested ; */ ; */ SELECT 1;", ["/* a /* nested ; */ ; */ SELECT 1;"]),
    ("SELECT $$a;b$$; SELECT $x$ ; $x$;", ["SELECT $$a;b$$;", "SELECT $x$ ; $x$;"]),
    (";;;", []),
    ("SELECT 'unterminated; SELECT 2;", ["SELECT 'unterminated; SELECT 2;"]),
])
def test_statement_splitting(text, statements):
    assert split_statements(text) == statements


def test_prompt_knows_when_a_statement_is_complete():
    assert is_complete("SELECT 1;") and is_complete("SELECT 1\nFROM x;  -- done")
    assert not is_complete("SELECT 1") and not is_complete("SELECT ';") and not is_complete("SELECT 1 /* ; */")
    assert not is_complete("SELECT $$ ; ") and not is_complete("")


# ---------------------------------------------------------------- scripts (piped stdin)


def test_piped_script_with_dot_commands(small_db, tmp_path):
    out_file = tmp_path / "from-dot-output.csv"
    script = f"""
.tables mart_%
.describe journeys
.schema stg_journey_events
.mode csv
SELECT count(*) AS n
  FROM journeys;
.timer on
SELECT 1 AS timed;
.timer off
.output {out_file}
SELECT channels FROM journeys ORDER BY journey_id;
.output
.mode nonsense
.frobnicate
SELECT * FROM nope;
.format json
SELECT [1, 2] AS l;
"""
    done = cxj_process(small_db, stdin=script)
    out, err = done.stdout.decode(), done.stderr.decode()
    assert done.returncode == 1  # a statement and two commands failed, and every line after them still ran
    assert "mart_daily_kpis" in out and "Mart: daily journey KPIs" in out  # .tables shows the descriptions
    assert "channel_hops" in out and "Consecutive customer touchpoints on different channels." in out  # .describe
    assert "CREATE VIEW stg_journey_events" in out
    assert "n\n3\n" in out and "timed\n1\nRun Time: " in out
    assert [json.loads(r[0]) if i else r[0] for i, r in enumerate(csv.reader(io.StringIO(out_file.read_text())))] == [
        "channels", ["email"], ["chat", "email"], ['sms, "quoted"']]
    assert json.loads(out[out.index('[\n{"l"'):]) == [{"l": [1, 2]}]
    assert [line.split(":")[0] for line in err.strip().splitlines()] == ["Error"] * 3
    assert "nonsense" in err and ".frobnicate" in err and "nope" in err


def test_query_from_stdin(small_db):
    done = cxj_process(small_db, "--format", "csv", stdin="SELECT count(*) AS n FROM journeys")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [b"n", b"3"]


# ---------------------------------------------------------------- the prompt, for real


def _controlling_terminal() -> None:
    """In the child: a new session whose controlling terminal is the pty, so Ctrl-C is SIGINT
    (whose default is restored: a test runner started in the background inherits it ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    """`cxj sql` on a pseudo-terminal: what a person at a keyboard gets."""

    def __init__(self, db: Path) -> None:
        self.master, slave = pty.openpty()
        env = {**os.environ, "TERM": "dumb", "COLUMNS": "120", "LINES": "40"}
        self.process = subprocess.Popen([*CXJ, "--db", str(db)], stdin=slave, stdout=slave, stderr=slave,
                                        cwd=ROOT, env=env, close_fds=True, preexec_fn=_controlling_terminal)
        os.close(slave)
        self.screen = ""

    def read_until(self, text: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while text not in self.screen:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"{text!r} never appeared; screen:\n{self.screen[-3000:]}"
            ready, _, _ = select.select([self.master], [], [], remaining)
            if ready:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:  # the process ended and closed the terminal
                    chunk = b""
                if not chunk:
                    assert text in self.screen, f"{text!r} never appeared before exit; screen:\n{self.screen[-3000:]}"
                self.screen += chunk.decode(errors="replace")
        index = self.screen.index(text) + len(text)
        seen, self.screen = self.screen[:index], self.screen[index:]
        return seen

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    def wait_until_waiting_for_keys(self, timeout: float = 30.0) -> None:
        """Waits until the prompt sleeps in its wait for a key, as a person does before pressing Ctrl-C.

        Python's readline draws the prompt before it starts waiting; a SIGINT in that gap only sets
        Python's flag, and the wait then never wakes until the next key. A person cannot type that
        fast; a test on a loaded machine can, so it waits for the kernel to say the prompt sleeps.
        """
        deadline = time.monotonic() + timeout
        wchan = Path(f"/proc/{self.process.pid}/wchan")
        while not any(word in wchan.read_text() for word in ("poll", "select")):
            assert time.monotonic() < deadline, f"the prompt never waited for a key (in {wchan.read_text()!r})"
            time.sleep(0.02)

    def close(self) -> int:
        try:
            return self.process.wait(timeout=30)
        finally:
            os.close(self.master)


def test_prompt_on_a_real_terminal_never_crashes(small_db):
    term = Terminal(small_db)
    try:
        term.read_until("Type .help for help.")
        term.read_until("cxj> ")
        term.type(".mode csv\n")
        term.read_until("cxj> ")
        term.type("SELECT journey_id, channels\n")
        term.read_until("...> ")  # continuation: the statement is not complete yet
        term.type("FROM journeys ORDER BY 1;\n")
        seen = term.read_until("cxj> ")
        assert 'j2,"[""chat"", ""email""]"' in seen  # a list column in CSV: the old prompt crashed here
        term.type("SELECT * FROM no_such_table;\n")
        assert "Error: " in term.read_until("cxj> ")
        term.type("SELECT 'unfinished\n")
        term.read_until("...> ")
        term.wait_until_waiting_for_keys()
        term.type("\x03")  # Ctrl-C drops the half-typed statement
        term.read_until("cxj> ")
        term.type(".mode line\nSELECT 'ü 日本' AS u, NULL AS n, {'a': 1} AS s;\n")
        seen = term.read_until("cxj> ", timeout=30)
        seen += term.read_until("cxj> ") if "u = " not in seen else ""
        assert "u = ü 日本" in seen and "n = NULL" in seen and 's = {"a": 1}' in seen
        term.type(".timer on\n.mode table\nSELECT 2/3 AS r;\n")
        seen = ""
        while "Run Time:" not in seen:
            seen += term.read_until("cxj> ")
        assert "0.6667" in seen
        term.type(".schema mart_open_backlog\n")
        assert "CREATE VIEW mart_open_backlog" in term.read_until("cxj> ")
        term.type(".nonsense\n")
        assert "unknown command" in term.read_until("cxj> ")
        term.type(".help\n")
        assert ".output [FILE]" in term.read_until("cxj> ")
        term.type(".quit\n")
        assert term.close() == 0
    finally:
        if term.process.poll() is None:
            term.process.kill()
            term.process.wait()


def test_prompt_ends_cleanly_on_ctrl_d(small_db):
    term = Terminal(small_db)
    try:
        term.read_until("cxj> ")
        term.type("SELECT 40 + 2 AS answer;\n")
        assert "42" in term.read_until("cxj> ")
        term.type("\x04")
        assert term.close() == 0
    finally:
        if term.process.poll() is None:
            term.process.kill()
            term.process.wait()


# ---------------------------------------------------------------- while the pipeline writes

WRITER = """
import sys
from pipelines.storage.store import Store
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
            [*CXJ, "--db", str(small_db), "--format", "csv",
             "SELECT (SELECT count(*) FROM journeys) AS journeys, (SELECT sum(journeys) FROM mart_daily_kpis) AS kpi,"
             " (SELECT published_batch_id FROM replica_state) AS batch; SELECT channels FROM journeys WHERE journey_id = 'j2'"],
            capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert done.returncode == 0, done.stderr
        assert done.stdout.split("\n")[:4] == ["journeys,kpi,batch", "3,3,1", "channels", '"[""chat"", ""email""]"']
    finally:
        writer.stdin.close()
        writer.wait(timeout=30)


def test_parquet_holds_one_result_per_file(small_db, tmp_path, capsys):
    target = tmp_path / "two.parquet"
    assert cxj("--db", str(small_db), "--format", "parquet", "-o", str(target), "SELECT 1 AS a; SELECT 2 AS b") == 1
    assert not target.exists() and "one result per file" in capsys.readouterr().err
    assert cxj("--db", str(small_db), "--format", "parquet", "-o", str(target), "BEGIN; SELECT 2 AS b; COMMIT") == 0
    assert pq.read_table(target).to_pylist() == [{"b": 2}]  # statements without a result do not count
    scripted = tmp_path / "dot.parquet"
    done = cxj_process(small_db, stdin=f".mode parquet\n.output {scripted}\nSELECT 1 AS a;\nSELECT [3] AS c;\n")
    assert done.returncode == 0, done.stderr
    assert pq.read_table(scripted).to_pylist() == [{"c": [3]}]  # like the DuckDB CLI: each result replaces the file


def test_statements_without_a_result_print_nothing(small_db, capsys):
    assert cxj("--db", str(small_db), "--format", "csv", "BEGIN; SELECT 5 AS five; COMMIT") == 0
    assert capsys.readouterr().out.split() == ["five", "5"]
