"""Readers cannot harm the data (issue 9): hostile SQL through every reader entry point.

A real `cxj run --once` lands simulated events (with duplicates and malformed messages) and
publishes its read replica. Then generated hostile statements — writes, COPY/EXPORT over the
database, its WAL, the replica's catalog and data files, ATTACH (read-write or not), DETACH,
SET/RESET of the safety settings, INSTALL/LOAD, PRAGMAs, DuckLake maintenance functions, SQL
hidden in strings, reads of other files — go through `cxj sql` (in-process and as real
subprocesses), the interactive prompt, `pipelines.connect()/query()`. After every one: it
failed with exactly one line (exit 1), and the database file and the replica are
byte-identical. At the end the pipeline still starts and lands new events exactly.

Also: the documented read opt-in (`--allow-read` / CXJ_SQL_ALLOW_READ) reads but never writes,
and a replica tampered with out of band makes `cxj status` WARN until the writer rebuilds it.
"""
from __future__ import annotations

import hashlib
import random
import re
import shutil
import sqlite3
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb
import pytest

from pipelines.cli import sql as cmd_sql
from pipelines.cli.main import main as cli_main
from pipelines.kafka.simulator import generate_customer_events, to_messages
from pipelines.storage.reader import connect, open_reader, query
from pipelines.storage.replica import TABLES, catalog_path, data_path, lake_dir, read_sidecar, read_summary
from tests.support import new_topics, send

ROOT = Path(__file__).resolve().parent.parent
CUSTOMERS = 30


def cxj_run(db: Path, broker, topics: dict[str, str], *extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pipelines.cli", "run", "--once", "--db", str(db),
           "--bootstrap-servers", broker.bootstrap_servers, "--topic-tickets", topics["tickets"],
           "--topic-chats", topics["chats"], "--topic-surveys", topics["surveys"], *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)


def cxj_status(db: Path, broker, topics: dict[str, str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pipelines.cli", "status", "--db", str(db), "--bootstrap-servers", broker.bootstrap_servers,
           "--topic-tickets", topics["tickets"], "--topic-chats", topics["chats"], "--topic-surveys", topics["surveys"]]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)


@pytest.fixture(scope="module")
def landed(broker, tmp_path_factory) -> dict[str, Any]:
    """A replicated database landed by the real pipeline, and a copy of it without a replica."""
    topics = new_topics(broker)
    events = generate_customer_events(CUSTOMERS, 91, datetime(2026, 7, 1, tzinfo=timezone.utc))
    messages = to_messages(events, 91, 0.1, 0.1, 0.05)
    sent = send(broker, topics, messages)
    base = tmp_path_factory.mktemp("reader-safety")
    db = base / "replicated" / "journeys.duckdb"
    result = cxj_run(db, broker, topics, "--max-batch-events", "200")
    assert result.returncode == 0, result.stderr[-3000:]
    assert catalog_path(db).exists()
    plain = base / "plain" / "journeys.duckdb"
    plain.parent.mkdir()
    shutil.copy(db, plain)
    return {"topics": topics, "sent": sent, "db": db, "plain": plain, "base": base}


def clone(db: Path, target: Path) -> Path:
    """A private copy of a database and its replica (the replica is found by absolute path)."""
    target.mkdir(parents=True, exist_ok=True)
    copy = target / db.name
    shutil.copy(db, copy)
    if lake_dir(db).exists():
        shutil.copytree(lake_dir(db), lake_dir(copy))
    return copy


def files_of(db: Path) -> dict[str, str]:
    """sha256 of every file of the database and its replica (SQLite's -wal/-shm side files aside)."""
    found = {}
    for path in sorted([p for p in db.parent.rglob("*") if p.is_file()]):
        if path.name.endswith(("-wal", "-shm")):
            continue
        found[str(path.relative_to(db.parent))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def stats_of(db: Path) -> dict[str, tuple[int, int, int]]:
    """(size, mtime, inode) of every file of the database and its replica: a cheap per-statement
    check (any write changes one of them); files_of() compares the bytes."""
    found = {}
    for path in sorted([p for p in db.parent.rglob("*") if p.is_file()]):
        if path.name.endswith(("-wal", "-shm")):
            continue
        st = path.stat()
        found[str(path.relative_to(db.parent))] = (st.st_size, st.st_mtime_ns, st.st_ino)
    return found


def summary(db: Path) -> dict[str, int]:
    with duckdb.connect(str(db), read_only=True) as con:
        return read_summary(con)


# ------------------------------------------------------------------ hostile statements

def hostile_statements(db: Path, elsewhere: Path, replica_of: Path | None = None) -> list[str]:
    """Everything a reader must not be able to do, aimed at this database and at the replica of
    ``replica_of`` (default: ``db``'s own)."""
    replica_of = replica_of or db
    catalog = catalog_path(replica_of).resolve()
    data = data_path(replica_of).resolve()
    a_data_file = next(p for p in sorted(data.rglob("*.parquet")))
    targets = [db.resolve(), Path(str(db.resolve()) + ".wal"), catalog, a_data_file, data / "new.parquet",
               elsewhere / "out.csv"]
    statements: list[str] = []
    for target in targets:
        statements += [f"COPY (SELECT 1) TO '{target}'", f"COPY journeys TO '{target}' (FORMAT parquet)",
                       f"COPY (SELECT 1 AS x) TO '{target}' (FORMAT csv, HEADER false)"]
    statements += [
        f"EXPORT DATABASE '{elsewhere / 'export'}'",
        f"EXPORT DATABASE '{data}' (FORMAT parquet)",
        f"IMPORT DATABASE '{elsewhere}'",
        f"COPY journeys FROM '{elsewhere / 'in.csv'}'",
        f"ATTACH '{db.resolve()}' AS w",
        f"ATTACH '{db.resolve()}' AS w (READ_ONLY)",
        f"ATTACH 'ducklake:sqlite:{catalog}' AS w (DATA_PATH '{data}/')",
        f"ATTACH 'ducklake:sqlite:{catalog}' AS w (READ_ONLY)",
        f"ATTACH '{catalog}' AS w (TYPE sqlite)",
        f"ATTACH 'sqlite:{catalog}' AS w",
        f"ATTACH '{elsewhere / 'new.duckdb'}' AS w",
        "ATTACH ':memory:' AS m",
        "DETACH lake", "DETACH DATABASE IF EXISTS lake", "USE memory", "USE system",
        "INSERT INTO pipeline_batches SELECT 999, now(), now(), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, NULL, NULL, NULL, NULL, '[]'",
        "INSERT INTO events SELECT * FROM events",
        "UPDATE pipeline_offsets SET next_offset = 0",
        "UPDATE journeys SET status = 'resolved'",
        "DELETE FROM journeys",
        "DELETE FROM pipeline_batches WHERE batch_id > 0",
        "TRUNCATE events",
        "DROP TABLE journeys", "DROP VIEW mart_daily_kpis", "DROP TABLE IF EXISTS pipeline_offsets",
        "ALTER TABLE journeys ADD COLUMN z INTEGER", "ALTER TABLE journeys RENAME TO j2",
        "CREATE TABLE t AS SELECT * FROM journeys", "CREATE TEMP TABLE t AS SELECT 1",
        "CREATE OR REPLACE VIEW mart_daily_kpis AS SELECT 1", "CREATE MACRO m() AS 1",
        "CREATE SEQUENCE s", "CREATE SCHEMA s", "CREATE TYPE mood AS ENUM ('a')",
        "CREATE SECRET s (TYPE s3, KEY_ID 'k', SECRET 'v')",
        "MERGE INTO journeys USING journeys AS s ON journeys.journey_id = s.journey_id WHEN MATCHED THEN DELETE",
        "INSERT INTO journeys SELECT * FROM journeys ON CONFLICT DO NOTHING",
        "SET enable_external_access = true", "RESET enable_external_access",
        "SET lock_configuration = false", "RESET lock_configuration",
        "SET allowed_directories = ['/']", f"SET allowed_paths = ['{db.resolve()}']", "RESET allowed_directories",
        "SET autoinstall_known_extensions = true", "SET autoload_known_extensions = true",
        "SET allow_community_extensions = true", "SET allow_unsigned_extensions = true",
        "SET GLOBAL enable_external_access = true", "SET SESSION enable_external_access = true",
        f"SET temp_directory = '{elsewhere}'", "SET threads = 1", "SET memory_limit = '1GB'",
        "SET VARIABLE x = 1", "RESET ALL",
        "PRAGMA enable_profiling", f"PRAGMA profiling_output = '{elsewhere / 'profile.txt'}'",
        "PRAGMA enable_checkpoint_on_shutdown", "PRAGMA force_checkpoint",
        "INSTALL httpfs", "FORCE INSTALL httpfs", "LOAD httpfs", f"LOAD '{elsewhere / 'evil.duckdb_extension'}'",
        "INSTALL evil FROM 'http://127.0.0.1:1'",
        "CHECKPOINT", "FORCE CHECKPOINT", "CHECKPOINT lake", "VACUUM", "ANALYZE", "VACUUM journeys",
        "CALL ducklake_cleanup_old_files('lake', cleanup_all => true)",
        "SELECT * FROM ducklake_cleanup_old_files('lake', cleanup_all => true)",
        "SELECT * FROM ducklake_delete_orphaned_files('lake', cleanup_all => true)",
        "SELECT * FROM ducklake_expire_snapshots('lake', older_than => now())",
        "SELECT * FROM ducklake_merge_adjacent_files('lake')",
        "SELECT * FROM ducklake_rewrite_data_files('lake', delete_threshold => 0)",
        "SELECT * FROM ducklake_flush_inlined_data('lake')",
        "SELECT * FROM ducklake_set_option('lake', 'parquet_compression', 'zstd')",
        "SELECT count(*) FROM journeys WHERE journey_id IN (SELECT path FROM ducklake_cleanup_old_files('lake'))",
        "WITH gone AS (SELECT * FROM ducklake_delete_orphaned_files('lake')) SELECT * FROM gone",
        "SELECT * FROM query('DELETE FROM journeys')",
        "SELECT * FROM query('SELECT * FROM ducklake_cleanup_old_files(''lake'', cleanup_all => true)')",
        "SELECT * FROM query_table('journeys')",
        "SELECT * FROM sqlite_query('__ducklake_metadata_lake', 'DELETE FROM ducklake_snapshot')",
        f"SELECT * FROM sqlite_attach('{catalog}')",
        "SELECT * FROM checkpoint()", "SELECT * FROM force_checkpoint('lake')",
        "EXPLAIN ANALYZE DELETE FROM journeys", f"EXPLAIN ANALYZE COPY (SELECT 1) TO '{db.resolve()}'",
        "EXPLAIN SELECT * FROM ducklake_cleanup_old_files('lake')",
        "SELECT 1; DELETE FROM journeys", f"SELECT 1; COPY (SELECT 1) TO '{db.resolve()}'",
        "BEGIN; DELETE FROM journeys; COMMIT",
        "SELECT * FROM read_csv('/etc/passwd', sep = ':')", "SELECT * FROM read_text('/etc/hostname')",
        "SELECT * FROM read_blob('/etc/passwd')", "SELECT * FROM glob('/etc/*')", "SELECT * FROM sniff_csv('/etc/passwd')",
        # (a reader of the database file itself may read that file's bytes: it reads its contents anyway)
        "FROM '/etc/passwd'", f"SELECT * FROM read_blob('{replica_of.resolve()}')",
        f"SELECT * FROM read_csv('{elsewhere / 'mine.csv'}')",
    ]
    return statements


def vary(sql: str, rng: random.Random) -> str:
    """The same statement, written differently: case outside quotes, comments, whitespace."""
    parts = re.split(r"('(?:[^']|'')*')", sql)
    case = rng.choice([str.upper, str.lower, str.swapcase, lambda s: s])
    parts = [p if p.startswith("'") else case(p) for p in parts]
    text = "".join(parts)
    text = rng.choice(["", "/* analyst */ ", "-- hello\n", "\n\t "]) + text
    return text + rng.choice(["", ";", " ;  ", "\n"])


def generated(db: Path, elsewhere: Path, seed: int, variants: int = 1, replica_of: Path | None = None) -> list[str]:
    rng = random.Random(seed)
    base = hostile_statements(db, elsewhere, replica_of)
    return base + [vary(s, rng) for s in base for _ in range(variants)]


def sample(statements: list[str], n: int, seed: int) -> list[str]:
    """n statements spread over the whole list (every kind is represented), in random order.

    Each `cxj sql` call opens a fresh connection (loading the DuckLake extensions costs about a
    second on a busy machine), so the one-shot CLI path gets a sample; the Python API and the
    prompt, which share the same checks on one connection, get every generated statement."""
    step = max(1, len(statements) // n)
    chosen = statements[::step][:n]
    random.Random(seed).shuffle(chosen)
    return chosen


def assert_refused_in_one_line(code: int, err: str, statement: str) -> None:
    assert code == cmd_sql.EXIT_SQL, (statement, code, err)
    assert "Traceback" not in err, (statement, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, (statement, err)


def prepared(landed, tmp_path: Path, source: str) -> tuple[Path, Path]:
    original = landed["db"] if source == "replica" else landed["plain"]
    db = clone(original, tmp_path / source)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "mine.csv").write_text("a,b\n1,2\n")
    (elsewhere / "in.csv").write_text("x\n")
    return db, elsewhere


# ------------------------------------------------------------------ cxj sql (one-shot)

@pytest.mark.parametrize("source", ["replica", "database"])
def test_hostile_statements_through_cxj_sql_change_nothing(landed, tmp_path, capsys, source):
    db, elsewhere = prepared(landed, tmp_path, source)
    # without a replica of its own, the statements aim at another database's replica too
    replica_of = db if source == "replica" else clone(landed["db"], tmp_path / "aim")
    before_files, before_aimed, before = files_of(db), files_of(replica_of), summary(db)
    before_elsewhere = sorted(p.name for p in elsewhere.iterdir())
    statements = generated(db, elsewhere, seed=9, replica_of=replica_of)
    assert len(statements) >= 200
    before_stats = stats_of(db)
    for statement in sample(statements, 60, seed=9):
        code = cli_main(["sql", "--db", str(db), statement])
        captured = capsys.readouterr()
        assert_refused_in_one_line(code, captured.err, statement)
        assert stats_of(db) == before_stats, statement
    assert files_of(db) == before_files
    assert summary(db) == before and files_of(replica_of) == before_aimed
    assert sorted(p.name for p in elsewhere.iterdir()) == before_elsewhere  # nothing created elsewhere
    # reading still works, from the source it should
    assert open_reader(db, one_shot=True)[1] == source
    assert cli_main(["sql", "--db", str(db), "--format", "csv", "SELECT count(*) AS n FROM journeys"]) == 0
    assert capsys.readouterr().out.split() == ["n", str(before["journeys"])]


def test_hostile_statements_aimed_at_a_replica_from_a_replica_less_reader_change_nothing(landed, tmp_path, capsys):
    """A reader of database A cannot touch the files of database B (its replica included)."""
    other = clone(landed["db"], tmp_path / "other")
    db = clone(landed["plain"], tmp_path / "plain")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    before_other, before_db = files_of(other), files_of(db)
    for statement in sample(generated(db, elsewhere, seed=11, variants=0, replica_of=other), 40, seed=11):
        code = cli_main(["sql", "--db", str(db), statement])
        assert_refused_in_one_line(code, capsys.readouterr().err, statement)
    assert files_of(other) == before_other and files_of(db) == before_db


def test_the_original_attack_as_real_subprocesses(landed, tmp_path):
    """The reported overwrite, plus a few others, through the real `cxj sql` executable path."""
    db, elsewhere = prepared(landed, tmp_path, "replica")
    before = files_of(db)
    attacks = [f"COPY (SELECT 1) TO '{db}'", f"ATTACH 'ducklake:sqlite:{catalog_path(db)}' AS rw",
               "INSERT INTO pipeline_batches SELECT * FROM pipeline_batches", "SELECT * FROM read_csv('/etc/passwd')",
               "SET enable_external_access = true"]
    for attack in attacks:
        done = subprocess.run([sys.executable, "-m", "pipelines.cli", "sql", "--db", str(db), attack],
                              capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert done.returncode == 1, (attack, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr, done.stderr
        assert files_of(db) == before, attack
    # stdin form too
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", "sql", "--db", str(db)], input=attacks[0],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 1 and files_of(db) == before


def test_output_never_lands_on_the_database_or_its_replica(landed, tmp_path, capsys):
    db, _ = prepared(landed, tmp_path, "replica")
    before = files_of(db)
    a_data_file = next(data_path(db).rglob("*.parquet"))
    for target, fmt in [(db, "parquet"), (Path(str(db) + ".wal"), "csv"), (catalog_path(db), "csv"),
                        (a_data_file, "parquet"), (lake_dir(db) / "x.json", "json")]:
        code = cli_main(["sql", "--db", str(db), "--format", fmt, "--output", str(target), "SELECT 1 AS x"])
        err = capsys.readouterr().err
        assert code == cmd_sql.EXIT_STORE and "readers never overwrite" in err, (target, err)
        assert files_of(db) == before, target
    good = tmp_path / "kpis.parquet"
    assert cli_main(["sql", "--db", str(db), "--format", "parquet", "--output", str(good), "FROM mart_daily_kpis"]) == 0
    assert duckdb.sql(f"SELECT count(*) FROM '{good}'").fetchone()[0] > 0
    assert files_of(db) == before


# ------------------------------------------------------------------ the prompt, connect(), query()

def test_hostile_statements_in_the_interactive_prompt(landed, tmp_path, monkeypatch, capsys, caplog):
    db, elsewhere = prepared(landed, tmp_path, "replica")
    before = files_of(db)
    statements = generated(db, elsewhere, seed=12, variants=0)
    import logging

    monkeypatch.setattr(logging.getLogger(), "handlers", [caplog.handler])  # not an earlier test's stderr
    lines = iter([*(s.rstrip().rstrip(";") + ";" for s in statements), "SELECT count(*) AS n FROM journeys;", ".quit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    con, source = open_reader(db)  # the prompt's connection: long-lived, on the replica
    args = type("Args", (), {"db": db, "format": "csv", "max_rows": 100, "output": None})()
    try:
        assert source == "replica"
        assert cmd_sql.repl(con, source, args) == 0
    finally:
        con.close()
    captured = capsys.readouterr()
    assert f"n\n{summary(db)['journeys']}\n" in captured.out
    errors = [line for line in captured.err.splitlines() if line.strip()]
    assert len(errors) == len(statements), errors[:5]  # one line per refused statement
    assert all(e.startswith("Error: ") for e in errors), errors[:5]
    assert files_of(db) == before


@pytest.mark.parametrize("source", ["replica", "database"])
def test_hostile_python_api_calls_change_nothing(landed, tmp_path, source):
    db, elsewhere = prepared(landed, tmp_path, source)
    before = files_of(db)
    replica_of = db if source == "replica" else clone(landed["db"], tmp_path / "aim")
    statements = generated(db, elsewhere, seed=13, replica_of=replica_of)
    refused = 0
    if source == "replica":
        con = connect(db)
    else:
        con, _ = open_reader(db, one_shot=True)
    try:
        for statement in statements:
            for call in (con.execute, con.sql, con.cursor().execute):
                try:
                    result = call(statement)
                    result.fetchall()  # a relation reads lazily: make it run
                except duckdb.Error:
                    refused += 1
                else:
                    pytest.fail(f"not refused through {call.__name__}: {statement!r}")
        relation = con.sql("SELECT * FROM journeys")
        for attempt in (lambda: relation.write_parquet(str(db)), lambda: relation.write_csv(str(catalog_path(db))),
                        lambda: relation.to_parquet(str(elsewhere / "x.parquet")), lambda: relation.insert_into("journeys"),
                        lambda: relation.create("copy"), lambda: relation.to_table("copy"),
                        lambda: relation.filter("true").write_csv(str(db)),
                        lambda: con.table_function("ducklake_cleanup_old_files", ["lake"]),
                        lambda: con.install_extension("httpfs"), lambda: con.load_extension("httpfs"),
                        lambda: con.read_csv("/etc/passwd")):
            with pytest.raises(duckdb.Error):
                attempt()
        assert con.execute("SELECT current_setting('enable_external_access'), current_setting('lock_configuration')"
                           ).fetchone() == (False, True)
        assert con.execute("SELECT count(*) FROM journeys").fetchone()[0] > 0
    finally:
        con.close()
    for statement in sample(statements, 10, seed=13):
        with pytest.raises(duckdb.Error):
            query(statement, db)
    assert files_of(db) == before and refused == 3 * len(statements)
    assert not any(elsewhere.glob("x.parquet"))


def test_connect_refuses_a_database_without_replica_instead_of_locking_it(landed, tmp_path):
    """A kept-open connection on the database file would stop the pipeline: refused, one line."""
    from pipelines.storage.reader import ReplicaNotReady

    db = clone(landed["plain"], tmp_path / "plain")
    with pytest.raises(ReplicaNotReady) as refused:
        connect(db)
    assert "no read replica" in str(refused.value) and "\n" not in str(refused.value)
    frame = query("SELECT count(*) AS n FROM journeys", db)  # one-shot reads still work
    assert frame["n"][0] == summary(db)["journeys"]


def test_status_and_check_read_through_the_locked_down_connection(landed, tmp_path, broker):
    for source in ("replica", "database"):
        db, _ = prepared(landed, tmp_path / source, source)
        before = files_of(db)
        con, got = open_reader(db, one_shot=True)
        try:
            assert got == source
            assert con.execute("SELECT current_setting('lock_configuration')").fetchone() == (True,)
            with pytest.raises(duckdb.Error):
                con.execute(f"COPY (SELECT 1) TO '{db}'")
        finally:
            con.close()
        status = cxj_status(db, broker, landed["topics"])
        assert status.returncode == 0, status.stdout + status.stderr
        check = subprocess.run([sys.executable, "-m", "pipelines.cli", "check", "--no-store", "--db", str(db)],
                               capture_output=True, text=True, timeout=180, cwd=ROOT)
        assert check.returncode == 0, check.stdout + check.stderr
        assert files_of(db) == before, source


# ------------------------------------------------------------------ opting in to reading files

def test_reading_other_files_is_off_by_default_and_opt_in_read_only(landed, tmp_path, capsys, monkeypatch):
    db, _ = prepared(landed, tmp_path, "replica")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "targets.csv").write_text("channel,target\nemail,3\nchat,1\n")
    other = tmp_path / "other"
    other.mkdir()
    (other / "secret.csv").write_text("s\n42\n")
    read_mine = f"SELECT sum(target) AS t FROM read_csv('{mine / 'targets.csv'}')"
    assert cli_main(["sql", "--db", str(db), read_mine]) == 1
    err = capsys.readouterr().err
    assert "--allow-read" in err and len(err.strip().splitlines()) == 1
    before = files_of(db)
    for opt_in in (["--allow-read", str(mine)], None):
        if opt_in is None:
            monkeypatch.setenv("CXJ_SQL_ALLOW_READ", str(mine))
            opt_in = []
        assert cli_main(["sql", "--db", str(db), "--format", "csv", *opt_in, read_mine]) == 0
        assert capsys.readouterr().out.split() == ["t", "4"]
        for hostile in (f"COPY (SELECT 1) TO '{mine / 'out.csv'}'", f"COPY journeys TO '{mine / 'targets.csv'}'",
                        f"SELECT * FROM read_csv('{other / 'secret.csv'}')",
                        f"SELECT * FROM read_csv('{mine}/../other/secret.csv')",
                        "SELECT * FROM read_csv('/etc/passwd')", f"EXPORT DATABASE '{mine / 'dump'}'",
                        "SET allowed_directories = ['/']"):
            code = cli_main(["sql", "--db", str(db), *opt_in, hostile])
            assert_refused_in_one_line(code, capsys.readouterr().err, hostile)
        assert sorted(p.name for p in mine.iterdir()) == ["targets.csv"]
        assert (mine / "targets.csv").read_text() == "channel,target\nemail,3\nchat,1\n"
    assert files_of(db) == before


# ------------------------------------------------------------------ the pipeline after all that

def test_pipeline_still_starts_and_lands_after_hostile_readers(landed, tmp_path, broker, capsys):
    db, elsewhere = prepared(landed, tmp_path, "replica")
    for statement in sample(generated(db, elsewhere, seed=14, variants=0), 15, seed=14):
        assert cli_main(["sql", "--db", str(db), statement]) == 1
    capsys.readouterr()
    before = summary(db)
    topics = landed["topics"]
    events = generate_customer_events(12, 92, datetime(2026, 7, 20, tzinfo=timezone.utc))
    for e in events:  # customers of their own
        e["customer_id"] = "late-" + e["customer_id"]
        e["event_id"] = "late-" + e["event_id"]
    sent = send(broker, topics, to_messages(events, 92))
    result = cxj_run(db, broker, topics)
    assert result.returncode == 0, result.stderr[-3000:]
    after = summary(db)
    assert after["events"] == before["events"] + len(events)
    assert after["offsets_total"] == before["offsets_total"] + sent == landed["sent"] + sent
    with duckdb.connect(str(db), read_only=True) as con:
        consumed, landed_n, dups, dead = con.execute(
            "SELECT sum(consumed), sum(landed), sum(duplicates), sum(dead_letters) FROM pipeline_batches").fetchone()
    assert consumed == landed_n + dups + dead == landed["sent"] + sent
    assert query("SELECT count(*) AS n FROM events", db)["n"][0] == after["events"]  # readers see it


# ------------------------------------------------------------------ a replica tampered with out of band

def hide_journeys(catalog: Path) -> None:
    """Edits the DuckLake catalog so the journeys' data files are no longer part of any snapshot."""
    with sqlite3.connect(catalog) as con:
        con.execute("UPDATE ducklake_data_file SET end_snapshot = begin_snapshot WHERE table_id IN "
                    "(SELECT table_id FROM ducklake_table WHERE table_name = 'journeys' AND end_snapshot IS NULL)")


def drop_batch_files(catalog: Path) -> None:
    with sqlite3.connect(catalog) as con:
        con.execute("DELETE FROM ducklake_data_file WHERE table_id IN "
                    "(SELECT table_id FROM ducklake_table WHERE table_name = 'pipeline_batches' AND end_snapshot IS NULL)")


def fake_batch_row(catalog: Path) -> None:
    """The reported attack, done out of band: a fake pipeline_batches row (stopped all publishes)."""
    con = duckdb.connect()
    from pipelines.storage.replica import attach_sql, load_extensions

    load_extensions(con)
    db = catalog.parent.parent / catalog.parent.name.removesuffix(".lake")
    con.execute(attach_sql(db, alias="rw"))
    con.execute("INSERT INTO rw.pipeline_batches SELECT 999, now(), now(), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, "
                "NULL, NULL, NULL, NULL, '[]'")
    con.execute("DELETE FROM rw.journeys WHERE journey_id IN (SELECT journey_id FROM rw.journeys LIMIT 3)")
    con.close()


@pytest.mark.parametrize("tamper", [hide_journeys, drop_batch_files, fake_batch_row])
def test_tampered_replica_warns_in_status_and_is_rebuilt_by_the_writer(landed, tmp_path, broker, tamper):
    db = clone(landed["db"], tmp_path / "tampered")
    topics = landed["topics"]
    assert cxj_status(db, broker, topics).returncode == 0
    tamper(catalog_path(db))
    status = cxj_status(db, broker, topics)
    assert status.returncode == 1, status.stdout + status.stderr
    assert status.stdout.startswith("WARN") and "read replica" in status.stdout and "disagrees" in status.stdout
    # the writer's next start rebuilds it, even with nothing new to land
    result = cxj_run(db, broker, topics)
    assert result.returncode == 0, result.stderr[-3000:]
    status = cxj_status(db, broker, topics)
    assert status.returncode == 0, status.stdout
    with duckdb.connect(str(db), read_only=True) as con:
        truth = {t: con.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall() for t in TABLES}
    with connect(db) as replica:
        for table in TABLES:
            assert replica.execute(f"SELECT * FROM {table} ORDER BY ALL").fetchall() == truth[table], table


def test_tampering_while_the_writer_runs_warns_and_the_next_batch_repairs(landed, tmp_path, broker):
    """The writer holds the database: status compares with what the writer last published."""
    from tests.support import send_events

    db = clone(landed["db"], tmp_path / "live")
    topics = new_topics(broker)
    send_events(broker, topics, [{"schema_version": 1, "event_id": "live-1", "event_type": "ticket.created",
                                  "occurred_at": "2026-07-02T10:00:00Z", "customer_id": "live-c",
                                  "ticket_id": "live-t", "channel": "email"}])
    log = tmp_path / "follow.log"
    cmd = [sys.executable, "-m", "pipelines.cli", "run", "--follow", "--db", str(db), "--bootstrap-servers",
           broker.bootstrap_servers, "--topic-tickets", topics["tickets"], "--topic-chats", topics["chats"],
           "--topic-surveys", topics["surveys"], "--poll-interval", "0.2s"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: query("SELECT count(*) AS n FROM events WHERE event_id = 'live-1'", db)["n"][0] == 1, proc, log)
        # tamper only after the writer's own check of that publish, which would repair it at once
        live_batch = query("SELECT max(batch_id) AS b FROM pipeline_batches", db)["b"][0]
        wait_for(lambda: (read_sidecar(db) or {}).get("last_batch") == live_batch, proc, log)
        hide_journeys(catalog_path(db))
        status = cxj_status(db, broker, topics)
        assert status.returncode == 1 and "disagrees" in status.stdout, status.stdout
        assert "as of the last publish" in status.stdout
        send_events(broker, topics, [{"schema_version": 1, "event_id": "live-2", "event_type": "ticket.message",
                                      "occurred_at": "2026-07-02T10:05:00Z", "customer_id": "live-c",
                                      "ticket_id": "live-t", "author": "agent", "channel": "email"}])
        wait_for(lambda: cxj_status(db, broker, topics).returncode == 0, proc, log)
        assert "rebuilding" in log.read_text()
    finally:
        proc.terminate()
        assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
    with duckdb.connect(str(db), read_only=True) as con:
        journeys = con.execute("SELECT count(*) FROM journeys").fetchone()[0]
    assert query("SELECT count(*) AS n FROM journeys", db)["n"][0] == journeys


def wait_for(condition, proc: subprocess.Popen, log: Path, timeout: float = 90.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            if condition():
                return
        except Exception:  # the replica may not exist for a moment at start
            pass
        time.sleep(0.3)
    raise AssertionError(f"condition not met in {timeout}s:\n{log.read_text()[-3000:]}")


def test_dot_output_in_scripts_and_the_prompt_never_targets_the_data(landed, tmp_path):
    """`.output FILE` (prompt or a script on stdin) is refused for the database and its replica."""
    db, _ = prepared(landed, tmp_path, "replica")
    before = files_of(db)
    a_data_file = next(data_path(db).rglob("*.parquet"))
    targets = [db, Path(str(db) + ".wal"), catalog_path(db), a_data_file, lake_dir(db) / "new.csv"]
    script = "".join(f".output {t}\nSELECT 1 AS x;\n" for t in targets)
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", "sql", "--db", str(db)], input=script,
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    refusals = [line for line in done.stderr.splitlines() if "readers never overwrite" in line]
    assert done.returncode == 1 and len(refusals) == len(targets), done.stderr
    assert files_of(db) == before
