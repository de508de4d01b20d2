"""The ops kit against real parts: status verdicts on dead letters, the rules file, the dashboard,
the health endpoint, and every metric the docs promise scraped from a live run."""
from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone

from tests.support import run_once, send, send_events


def good_events(prefix: str, n: int) -> list[dict]:
    start = datetime(2026, 9, 1, tzinfo=timezone.utc)
    return [{"event_id": f"{prefix}-{i}", "event_type": "ticket.created", "customer_id": f"{prefix}c{i}",
             "schema_version": 1, "occurred_at": (start + timedelta(minutes=i)).isoformat(),
             "ticket_id": f"{prefix}T{i}", "channel": "web"} for i in range(n)]


def status(db, broker, topics, *extra) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pipelines.cli", "status", "--db", str(db), "--bootstrap-servers",
           broker.bootstrap_servers, "--topic-tickets", topics["tickets"], "--topic-chats", topics["chats"],
           "--topic-surveys", topics["surveys"], *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_status_flags_a_dead_letter_rate(broker, topics, db):
    """96 % dead letters used to read OK; now the default threshold (10 %) says CRIT, with the figures."""
    send_events(broker, topics, good_events("ok", 4))
    send(broker, topics, [("tickets", b"k", b"not json %d" % i) for i in range(96)])
    run_once(db, broker, topics)
    result = status(db, broker, topics, "--json")
    report = json.loads(result.stdout)
    assert result.returncode == 2, result.stdout
    assert report["recent_consumed"] == 100 and report["recent_dead_letters"] == 96
    assert report["dead_letter_rate"] == 0.96
    assert any("dead-letter rate 96.0% (96 of 100 records" in r for r in report["reasons"])
    text = status(db, broker, topics)
    assert text.returncode == 2 and text.stdout.startswith("CRIT") and "dead-letter rate: 96.0% of 100 records" in text.stdout
    # thresholds: WARN past half, OK below half, off at 1
    assert status(db, broker, topics, "--max-dead-letter-rate", "1").returncode == 0
    assert status(db, broker, topics, "--max-dead-letter-rate", "100%").returncode == 0
    assert status(db, broker, topics, "--max-dead-letter-rate", "0.97").returncode == 1
    bad = status(db, broker, topics, "--max-dead-letter-rate", "1.5")
    assert bad.returncode == 2 and "not between 0 and 1" in bad.stderr


def test_status_dead_letter_rate_counts_recent_batches_only(broker, topics, db):
    """A clean batch after a bad one: the rate is over all batches of the last hour, exactly."""
    send(broker, topics, [("chats", b"k", b"[1]") for _ in range(5)])
    run_once(db, broker, topics)
    send_events(broker, topics, good_events("later", 95))
    run_once(db, broker, topics)
    report = json.loads(status(db, broker, topics, "--json").stdout)
    assert (report["recent_consumed"], report["recent_dead_letters"]) == (100, 5)
    assert report["level_name"] == "OK"  # 5 % is exactly half of the default 10 %: not past it
    assert json.loads(status(db, broker, topics, "--json", "--max-dead-letter-rate", "0.09").stdout)["level_name"] == "WARN"
