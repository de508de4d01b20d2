"""`cxj status` against the real broker: exact offsets and lag, freshness, exit codes."""
from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone

from pipelines.config.run_config import RunConfig
from pipelines.local.microbatch import MicroBatchRunner
from pipelines.storage.store import Store
from tests.support import send_events, table


def events(n: int) -> list[dict]:
    start = datetime(2026, 9, 1, tzinfo=timezone.utc)
    return [
        {"event_id": f"st-{i}", "event_type": "ticket.created", "customer_id": f"c{i % 7}", "schema_version": 1,
         "occurred_at": (start + timedelta(minutes=i)).isoformat(), "ticket_id": f"T{i}", "channel": "web"}
        for i in range(n)
    ]


def status(db, broker, topics, *extra):
    cmd = [sys.executable, "-m", "pipelines.cli", "status", "--db", str(db), "--bootstrap-servers",
           broker.bootstrap_servers, "--topic-tickets", topics["tickets"], "--topic-chats", topics["chats"],
           "--topic-surveys", topics["surveys"], *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_status_reports_exact_lag_and_exit_codes(broker, topics, db):
    send_events(broker, topics, events(30))
    with Store(db) as store:
        runner = MicroBatchRunner(RunConfig(db=db, settings=broker, topics=topics, max_batch_events=10), store)
        assert runner.run_batch() is not None  # lands 10 of 30
        runner.close()
    result = status(db, broker, topics, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    landed = dict(((t, p), o) for t, p, o in table(db, 'SELECT topic, "partition", next_offset FROM pipeline_offsets'))
    assert report["total_lag"] == 20
    tickets = [p for p in report["partitions"] if p["topic"] == topics["tickets"]]
    assert sum(p["end_offset"] for p in tickets) == 30
    for p in tickets:
        assert p["landed_offset"] == landed.get((p["topic"], p["partition"]), 0)
        assert p["lag"] == p["end_offset"] - p["landed_offset"]
    assert report["last_batch"]["consumed"] == 10
    assert report["newest_occurred_at"].startswith("2026-09-01")
    assert report["event_freshness_s"] > 0 and report["processing_freshness_s"] >= 0

    assert status(db, broker, topics, "--max-lag", "100").returncode == 0
    warn = status(db, broker, topics, "--max-lag", "30")  # 20 > 30/2
    assert warn.returncode == 1 and "WARN" in warn.stdout
    crit = status(db, broker, topics, "--max-lag", "19")
    assert crit.returncode == 2 and "CRIT" in crit.stdout and "lag 20" in crit.stdout
    stale = status(db, broker, topics, "--max-staleness", "0s", "--json")  # messages wait, last batch > 0 s old
    assert stale.returncode == 2


def test_status_when_caught_up_is_not_stale(broker, topics, db):
    send_events(broker, topics, events(5))
    from tests.support import run_once

    run_once(db, broker, topics)
    result = status(db, broker, topics, "--max-lag", "1", "--max-staleness", "1s")
    assert result.returncode == 0, result.stdout
    assert "total lag: 0" in result.stdout


def test_status_broker_down_is_critical(db, topics, broker):
    send_events(broker, topics, events(3))
    from tests.support import free_port, run_once

    run_once(db, broker, topics)
    cmd = [sys.executable, "-m", "pipelines.cli", "status", "--db", str(db), "--bootstrap-servers", f"127.0.0.1:{free_port()}"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "broker unreachable" in result.stdout
    assert "Traceback" not in result.stderr


def test_status_without_database_is_critical(tmp_path, broker):
    cmd = [sys.executable, "-m", "pipelines.cli", "status", "--db", str(tmp_path / "none.duckdb"),
           "--bootstrap-servers", broker.bootstrap_servers]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "does not exist" in result.stdout


def test_freshness_view_matches_tables(broker, topics, db):
    send_events(broker, topics, events(12))
    from tests.support import run_once

    run_once(db, broker, topics)
    row = table(db, "SELECT newest_occurred_at, last_batch_consumed, landed_offset_total, events_last_hour FROM v_freshness")[0]
    assert row[0] == datetime(2026, 9, 1, 0, 11, tzinfo=timezone.utc)
    assert row[1] == 12 and row[2] == 12 and row[3] == 12
