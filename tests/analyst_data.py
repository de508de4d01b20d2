"""A landed demo database for the analyst tests (dbt project, report, comments), built once per
test session by the real pipeline: simulator -> real broker -> Beam -> DuckDB.

Small on purpose (CI time): a few hundred customers still give every chart and every mart rows
(open journeys, ping-pong, multi-channel paths, surveys, dead letters).
"""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from pipelines.kafka.settings import KafkaSettings
from pipelines.kafka.simulator import generate_customer_events, to_messages
from tests.support import new_topics, run_once, send

CUSTOMERS = 400
SEED = 14
START = datetime(2026, 8, 1, tzinfo=timezone.utc)


def analyst_db(broker: KafkaSettings, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's demo database (built on first use; later calls return the same file)."""
    db = tmp_path_factory.getbasetemp() / "analyst-demo" / "journeys.duckdb"
    if db.exists():
        return db
    db.parent.mkdir(parents=True, exist_ok=True)
    topics = new_topics(broker)
    events = generate_customer_events(CUSTOMERS, SEED, START)
    send(broker, topics, to_messages(events, SEED, 0.02, 0.01, 0.01))
    run_once(db, broker, topics)
    return db
