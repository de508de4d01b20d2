"""Broker faults against the real broker process: down at start, stopped and restarted mid-run."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from infra.broker import ensure_topics, start_broker, stop_broker
from pipelines.kafka_config import KafkaSettings
from tests.support import free_port, send_events, table

TOPICS = {"tickets": "bf.tickets", "chats": "bf.chats", "surveys": "bf.surveys"}


def events(prefix: str, n: int) -> list[dict]:
    start = datetime(2026, 9, 1, tzinfo=timezone.utc)
    return [{"event_id": f"{prefix}-{i}", "event_type": "ticket.created", "customer_id": f"{prefix}{i % 5}",
             "schema_version": 1, "occurred_at": (start + timedelta(minutes=i)).isoformat(),
             "ticket_id": f"{prefix}T{i}", "channel": "email"} for i in range(n)]


def cli(db: Path, port: int, *mode: str) -> list[str]:
    return [sys.executable, "-m", "pipelines.cli", "run", *mode, "--db", str(db), "--bootstrap-servers",
            f"127.0.0.1:{port}", "--topic-tickets", TOPICS["tickets"], "--topic-chats", TOPICS["chats"],
            "--topic-surveys", TOPICS["surveys"], "--poll-interval", "0.2s"]


def landed(db: Path) -> int:
    try:
        from pipelines.reader import open_reader

        con, _ = open_reader(db, wait_s=2)
        try:
            return con.execute("SELECT count(*) FROM events").fetchone()[0]
        finally:
            con.close()
    except Exception:
        return -1


def wait_until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.5)
    return False


def test_once_without_broker_fails_clearly_and_lands_nothing(tmp_path):
    db = tmp_path / "j.duckdb"
    started = time.monotonic()
    result = subprocess.run([*cli(db, free_port(), "--once"), "--broker-timeout", "3s"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 3
    assert time.monotonic() - started < 60
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "cannot reach Kafka" in errors[0] and "gave up after 3s" in errors[0]
    assert "Traceback" not in result.stderr
    assert table(db, "SELECT (SELECT count(*) FROM pipeline_batches), (SELECT count(*) FROM events)") == [(0, 0)]


def test_follow_survives_broker_down_at_start_and_restart(tmp_path):
    port = free_port()
    state = tmp_path / "broker"
    db = tmp_path / "j.duckdb"
    proc = subprocess.Popen(cli(db, port, "--follow"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(4)  # broker down: the pipeline waits and retries
        assert proc.poll() is None
        start_broker(port=port, topics=[], state_dir=state)
        settings = KafkaSettings(bootstrap_servers=f"127.0.0.1:{port}")
        ensure_topics(settings, TOPICS.values(), 3)
        send_events(settings, TOPICS, events("a", 30))
        assert wait_until(lambda: landed(db) == 30, 90), "did not land after the broker came up"

        stop_broker(port=port, state_dir=state)  # memory-only broker: its topics are gone
        time.sleep(3)
        assert proc.poll() is None, "pipeline exited when the broker stopped"
        start_broker(port=port, topics=[], state_dir=state)
        ensure_topics(settings, TOPICS.values(), 3)
        send_events(settings, TOPICS, events("b", 20) + events("a", 5))  # a-* are re-deliveries
        assert wait_until(lambda: landed(db) == 50, 120), f"landed {landed(db)} after restart"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
        stop_broker(port=port, state_dir=state)
    assert proc.returncode == 0, err[-3000:]
    assert "Traceback" not in err
    assert "retrying" in err or "recreated" in err, err[-3000:]  # a clear log line while the broker was away
    assert table(db, "SELECT count(*), count(DISTINCT event_id) FROM events") == [(50, 50)]
    assert table(db, "SELECT sum(duplicates) FROM pipeline_batches") == [(5,)]
