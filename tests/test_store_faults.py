"""Database faults give one clear line and exit 2, never a traceback."""
from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from typing import Iterator

import duckdb


@contextlib.contextmanager
def holding_write_lock(db) -> Iterator[None]:
    """Another process that opened the database for writing and keeps it open."""
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import duckdb, sys, time; c = duckdb.connect({str(db)!r}); print('ready', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        yield
    finally:
        holder.kill()
        holder.wait()


def run_once_cli(db, broker, mode: str = "--once") -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pipelines.cli", "run", mode, "--db", str(db), "--bootstrap-servers", broker.bootstrap_servers]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def assert_one_clear_line(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1, result.stderr
    for word in words:
        assert word in errors[0], errors[0]


def test_database_locked_by_another_process(broker, tmp_path):
    db = tmp_path / "locked.duckdb"
    with holding_write_lock(db):
        assert_one_clear_line(run_once_cli(db, broker), "in use by another process")


def test_unwritable_path(broker, tmp_path):
    not_a_dir = tmp_path / "plain-file"
    not_a_dir.write_text("x")
    assert_one_clear_line(run_once_cli(not_a_dir / "journeys.duckdb", broker), "cannot open")


def test_file_that_is_not_a_database(broker, tmp_path):
    db = tmp_path / "notes.duckdb"
    db.write_text("these are my notes, not a database\n" * 10)
    assert_one_clear_line(run_once_cli(db, broker), "not a valid DuckDB database")
    assert db.read_text().startswith("these are my notes")  # never overwritten


def test_damaged_or_odd_database_paths(broker, tmp_path):
    good = tmp_path / "good.duckdb"
    duckdb.connect(str(good)).execute("CREATE TABLE t AS SELECT range AS i FROM range(100000)").close()
    truncated = tmp_path / "truncated.duckdb"
    truncated.write_bytes(good.read_bytes()[:8192])  # e.g. a copy cut short by a full disk
    empty = tmp_path / "empty.duckdb"
    empty.write_bytes(b"")
    a_directory = tmp_path / "adir.duckdb"
    a_directory.mkdir()
    for db, words in ((truncated, ["cannot open", "truncated.duckdb"]), (empty, ["not a valid DuckDB database"]),
                      (a_directory, ["cannot open", "Is a directory"])):
        assert_one_clear_line(run_once_cli(db, broker), *words)
    assert len(truncated.read_bytes()) == 8192 and empty.read_bytes() == b""  # never "repaired" by overwriting


def test_follow_on_a_locked_database_exits_at_once(broker, tmp_path):
    db = tmp_path / "locked.duckdb"
    with holding_write_lock(db):
        started = time.monotonic()
        assert_one_clear_line(run_once_cli(db, broker, "--follow"), "in use by another process")
        assert time.monotonic() - started < 30


def test_analyst_commands_on_a_bad_file(tmp_path, broker):
    db = tmp_path / "notes.duckdb"
    db.write_text("nope")
    for command in (["sql", "SELECT 1"], ["status"], ["check"]):
        result = subprocess.run([sys.executable, "-m", "pipelines.cli", *command, "--db", str(db),
                                 *(["--bootstrap-servers", broker.bootstrap_servers] if command == ["status"] else [])],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr
        problems = [line for line in (result.stdout + result.stderr).splitlines() if "not a valid DuckDB database" in line]
        assert len(problems) == 1 and "cannot open" in problems[0], (command, result.stdout, result.stderr)
