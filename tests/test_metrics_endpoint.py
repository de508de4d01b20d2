"""`cxj run --follow --metrics-port`: scrape the real endpoint while batches land."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timedelta, timezone

from tests.support import free_port, send, send_events, table


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def wait_for(port: int, predicate, timeout: float = 60.0) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    last: dict[str, float] = {}
    while time.monotonic() < deadline:
        try:
            last = scrape(port)
            if predicate(last):
                return last
        except OSError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"metrics never matched; last scrape: { {k: v for k, v in last.items() if k.startswith('cxj_')} }")


def events(prefix: str, n: int) -> list[dict]:
    start = datetime(2026, 9, 1, tzinfo=timezone.utc)
    evs = [{"event_id": f"{prefix}-{i}", "event_type": "ticket.created", "customer_id": f"m{i}", "schema_version": 1,
            "occurred_at": (start + timedelta(minutes=i)).isoformat(), "ticket_id": f"{prefix}T{i}", "channel": "email"}
           for i in range(n)]
    return evs


def test_metrics_move_while_following(broker, topics, tmp_path):
    port = free_port()
    send_events(broker, topics, events("a", 20))
    cmd = [sys.executable, "-m", "pipelines.cli", "run", "--follow", "--db", str(tmp_path / "m.duckdb"),
           "--metrics-port", str(port), "--poll-interval", "0.2s", "--bootstrap-servers", broker.bootstrap_servers,
           "--topic-tickets", topics["tickets"], "--topic-chats", topics["chats"], "--topic-surveys", topics["surveys"]]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        # all 20 were sent before the start: the first batch takes them all
        first = wait_for(port, lambda m: m.get('cxj_events_landed_total{event_type="ticket.created"}', 0) >= 20)
        assert first['cxj_events_landed_total{event_type="ticket.created"}'] == 20
        assert first["cxj_lag_messages"] == 0
        assert first["cxj_batches_total"] == 1
        assert first["cxj_end_to_end_latency_seconds_count"] == 20
        send_events(broker, topics, events("b", 15))
        send(broker, topics, [("tickets", b"m0", b'{"event_id": "bad"}')])
        # the two sends may land in one batch or two: wait until both are in, whatever the split
        second = wait_for(port, lambda m: m.get('cxj_events_landed_total{event_type="ticket.created"}', 0) >= 35
                          and m.get('cxj_dead_letters_total{reason="unknown_schema_version"}', 0) >= 1)
        assert second['cxj_events_landed_total{event_type="ticket.created"}'] == 35
        assert second['cxj_dead_letters_total{reason="unknown_schema_version"}'] == 1
        assert second["cxj_batches_total"] > first["cxj_batches_total"]
        assert second["cxj_batch_duration_seconds_count"] == second["cxj_batches_total"]
        assert second["cxj_processing_freshness_seconds"] >= 0
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert "stopped cleanly" in err
    # nothing arrived after the last scrape, so the counters saw every batch that landed
    assert table(tmp_path / "m.duckdb", "SELECT count(*), sum(landed), sum(dead_letters) FROM pipeline_batches") == [
        (second["cxj_batches_total"], 35, 1)]
