"""Replays change nothing: `cxj stream` in the bounded mode on the in-process runner, reading the
real local broker, then the same records read again from the earliest offsets (what a runner
replay or a job restarted without its checkpoint does). The store's tables must be identical
after the second run, and every message accounted for after each."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.kafka.settings import KafkaSettings
from tests.support import send, send_events
from tests.test_streaming import golden_records, read_store

TABLES = ("events", "event_copies", "dead_letters", "journeys", "journey_events", "journey_metrics", "journey_handoffs")


def snapshot(catalog: str, data: str) -> dict[str, list]:
    """Every table's rows minus the wall-clock columns (landed_at, updated_at)."""
    out = {}
    for table in TABLES:
        columns = [c for (c,) in read_store(catalog, data, f"SELECT column_name FROM (DESCRIBE {{lake}}.{table})")
                   if c not in ("landed_at", "updated_at")]
        out[table] = sorted(map(repr, read_store(catalog, data, f"SELECT {', '.join(chr(34) + c + chr(34) for c in columns)} FROM {{lake}}.{table}")))  # noqa: E501
    return out


@pytest.mark.slow  # three cxj runs; the short form is pipelines/streaming/lake_store_test.py (the store's idempotence)
def test_reading_everything_again_changes_nothing(broker: KafkaSettings, tmp_path: Path) -> None:
    from tests.support import new_topics

    topics = new_topics(broker)
    docs = [json.loads(v) for *_, v in golden_records()][:120]
    sent = send_events(broker, topics, docs) + send_events(broker, topics, docs[::9])
    sent += send(broker, topics, [("chats", b"x", b"\xff\xfe not utf-8")])
    store = tmp_path / "lake" / "catalog.sqlite"
    catalog, data = f"sqlite:{store}", str(store.parent / "data")
    base = [sys.executable, "-m", "pipelines.cli.main", "stream", "--stop-at-end", "--store", str(store),
            "--bootstrap-servers", broker.bootstrap_servers, "--topic-tickets", topics["tickets"],
            "--topic-chats", topics["chats"], "--topic-surveys", topics["surveys"]]
    first = subprocess.run(base, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    after_first = snapshot(catalog, data)
    assert sum(len(after_first[t]) for t in ("events", "event_copies", "dead_letters")) == sent
    assert len(after_first["dead_letters"]) == 1 and after_first["journeys"]
    # resuming from the store reads nothing new ...
    resumed = subprocess.run(base, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0 and "read 0 records" in resumed.stdout, resumed.stdout + resumed.stderr[-2000:]
    # ... and reading everything again lands the same tables
    again = subprocess.run(base + ["--start-from", "earliest"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"read {sent} records" in again.stdout, again.stdout
    assert snapshot(catalog, data) == after_first
