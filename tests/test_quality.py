"""The data-quality gate passes on a good landing and fails on deliberately corrupted tables."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import datetime, timezone

import duckdb
import pytest

from pipelines.kafka.simulator import generate_customer_events, to_messages
from tests.support import send, table


@pytest.fixture(scope="module")
def landed(broker, tmp_path_factory):
    """A good landing, made by `cxj run --once --check` in small batches (the gate passes each)."""
    from tests.support import new_topics

    topics = new_topics(broker)
    events = generate_customer_events(60, 21, datetime(2026, 8, 1, tzinfo=timezone.utc))
    send(broker, topics, to_messages(events, 21, 0.05, 0.05, 0.02))
    db = tmp_path_factory.mktemp("quality") / "good.duckdb"
    cmd = [sys.executable, "-m", "pipelines.cli", "run", "--once", "--check", "--max-batch-events", "300", "--db", str(db),
           "--bootstrap-servers", broker.bootstrap_servers, "--topic-tickets", topics["tickets"],
           "--topic-chats", topics["chats"], "--topic-surveys", topics["surveys"]]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ, CXJ_REPLICA="off"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "data-quality check passed" in result.stderr
    return db, topics


def check(db) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.cli", "check", "--db", str(db)],
                          capture_output=True, text=True, timeout=180)


def corrupt(good, tmp_path, statement: str):
    bad = tmp_path / "bad.duckdb"
    shutil.copy(good, bad)
    with duckdb.connect(str(bad)) as con:
        con.execute(statement)
    return bad


def test_good_landing_passes_and_is_recorded(landed):
    db, _ = landed
    result = check(db)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("PASS")
    assert "Traceback" not in result.stderr
    # one row per batch from `run --check`, one from `cxj check`
    batches = table(db, "SELECT count(*) FROM pipeline_batches")[0][0]
    assert batches >= 2
    assert table(db, "SELECT count(*), count(*) FILTER (WHERE success AND failed = 0) FROM quality_checks") == [(batches + 1, batches + 1)]
    assert table(db, "SELECT count(DISTINCT batch_id) FROM quality_checks") == [(batches,)]


@pytest.mark.parametrize(
    "statement, failing",
    [
        ("INSERT INTO journeys SELECT * FROM journeys LIMIT 1", "journeys.journey_id"),
        ("UPDATE journeys SET csat = 9 WHERE journey_id IN (SELECT journey_id FROM journeys LIMIT 1)", "journeys.csat"),
        ("UPDATE journeys SET time_to_resolution_s = -5 WHERE status = 'resolved'", "journeys.time_to_resolution_s"),
        ("UPDATE journeys SET time_to_resolution_s = 10 WHERE status = 'open'", "journeys.ttr_null_iff_not_resolved"),
        ("UPDATE journeys SET resolved_at = started_at - INTERVAL 1 HOUR WHERE status = 'resolved'", "journeys.resolved_at>=started_at"),
        ("UPDATE journeys SET fcr = true WHERE contact_count > 1", "journeys.fcr_only_one_touch"),
        ("UPDATE journeys SET channel_hops = touchpoint_count + 1", "journeys.hops_below_touchpoints"),
        ("UPDATE journeys SET nps = 11", "journeys.nps"),
        ("UPDATE journeys SET handoff_count = -1 WHERE journey_id IN (SELECT journey_id FROM journeys LIMIT 3)", "journeys.handoff_count"),
        ("ALTER TABLE journeys ALTER journey_id DROP NOT NULL; "
         "UPDATE journeys SET journey_id = NULL WHERE journey_id IN (SELECT journey_id FROM journeys LIMIT 1)", "journeys.journey_id"),
        ("UPDATE journeys SET time_to_resolution_s = NULL WHERE status = 'resolved'", "journeys.ttr_null_iff_not_resolved"),
        ("UPDATE journeys SET fcr = true WHERE reopen_count > 0", "journeys.fcr_only_one_touch"),
        ("UPDATE journeys SET channel_hops = touchpoint_count WHERE touchpoint_count = 2", "journeys.hops_below_touchpoints"),
        ("UPDATE journeys SET status = 'closed' WHERE status = 'resolved'", "journeys.status"),
        ("DELETE FROM journeys WHERE journey_id IN (SELECT journey_id FROM journeys LIMIT 1)", "journey_events.journey_exists"),
        ("DROP INDEX IF EXISTS x; ALTER TABLE events RENAME TO events_old; "
         "CREATE TABLE events AS SELECT * FROM events_old UNION ALL (SELECT * FROM events_old LIMIT 2)", "events.event_id"),
    ],
)
def test_corrupted_tables_fail(landed, tmp_path, statement, failing):
    from pipelines.ops.checks import run_suite

    db, _ = landed
    with duckdb.connect(str(corrupt(db, tmp_path, statement)), read_only=True) as con:
        report = run_suite(con)
    assert not report.success
    assert failing in {f"{r.table}.{r.column}" for r in report.failed}, report.render()


def test_check_command_fails_with_exit_1(landed, tmp_path):
    db, _ = landed
    result = check(corrupt(db, tmp_path, "UPDATE journeys SET csat = 0"))
    assert result.returncode == 1, result.stdout
    assert result.stdout.startswith("FAIL") and "journeys.csat" in result.stdout


def test_run_check_stops_on_failure(broker, tmp_path, landed):
    db, topics = landed
    work = tmp_path / "gate.duckdb"
    shutil.copy(db, work)
    with duckdb.connect(str(work)) as con:  # corrupt an already landed journey, then land more
        con.execute("UPDATE journeys SET nps = 42")
        con.execute("DELETE FROM pipeline_offsets")  # re-read: every event is a duplicate, batches still land
    cmd = [sys.executable, "-m", "pipelines.cli", "run", "--once", "--check", "--db", str(work),
           "--bootstrap-servers", broker.bootstrap_servers, "--topic-tickets", topics["tickets"],
           "--topic-chats", topics["chats"], "--topic-surveys", topics["surveys"]]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 5, result.stderr[-2000:]
    assert "data-quality check failed" in result.stderr and "journeys.nps" in result.stderr
    assert table(work, "SELECT count(*) FROM quality_checks WHERE NOT success") == [(1,)]
