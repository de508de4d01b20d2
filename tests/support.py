"""Shared test helpers: real broker topics, real pipeline runs, real DuckDB files."""
from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import duckdb

from pipelines.config.run_config import RunConfig
from pipelines.kafka.local_broker import free_port as free_port  # one home; tests import it from here
from pipelines.kafka.settings import KafkaSettings
from pipelines.local.microbatch import MicroBatchRunner
from pipelines.storage.store import Store

JOURNEY_COLUMNS = (
    "journey_id, customer_id, status, started_at, resolved_at, last_event_at, time_to_resolution_s, "
    "first_response_s, handoff_count, team_handoff_count, channel_hops, touchpoint_count, contact_count, "
    "reopen_count, csat, nps, fcr, channels, agents, teams, threads, event_count"
)


def new_topics(settings: KafkaSettings, partitions: int = 3) -> dict[str, str]:
    """Unique topic names per test, so tests sharing one broker never see each other's data."""
    from pipelines.kafka.topics import ensure_topics

    suffix = uuid.uuid4().hex[:8]
    topics = {"tickets": f"t-{suffix}.tickets", "chats": f"t-{suffix}.chats", "surveys": f"t-{suffix}.surveys"}
    ensure_topics(settings, topics.values(), partitions)
    return topics


def send(settings: KafkaSettings, topics: dict[str, str], messages: Iterable[tuple[str, bytes, bytes]]) -> int:
    from kafka import KafkaProducer

    producer = KafkaProducer(**settings.client_kwargs(), linger_ms=5, acks="all")
    count = 0
    for stream, key, value in messages:
        producer.send(topics[stream], key=key, value=value)
        count += 1
    producer.flush()
    producer.close()
    return count


def send_events(settings: KafkaSettings, topics: dict[str, str], events: Iterable[dict[str, Any]]) -> int:
    def messages():
        for e in events:
            stream = {"ticket": "tickets", "chat": "chats", "survey": "surveys"}[str(e["event_type"]).split(".")[0]]
            yield stream, str(e.get("customer_id", "")).encode(), json.dumps(e).encode()

    return send(settings, topics, messages())


def run_once(db: Path, settings: KafkaSettings, topics: dict[str, str],
             prepare: Optional[Callable[[Store], None]] = None, **config: Any) -> list:
    """run --once in this process; ``prepare`` gets the opened store before the runner starts."""
    cfg = RunConfig(db=db, settings=settings, topics=topics, **config)
    with Store(db) as store:
        if prepare is not None:
            prepare(store)
        runner = MicroBatchRunner(cfg, store)
        try:
            return runner.run_once()
        finally:
            runner.close()


def land_in_rounds(db: Path, settings: KafkaSettings, topics: dict[str, str], rounds: Iterable[list[dict[str, Any]]],
                   after_round: Optional[Callable[[Store], None]] = None, **config: Any) -> None:
    """Each round's events sent, then landed by ``run_once`` of one runner kept across the rounds,
    as `cxj run --follow` keeps it; ``after_round`` gets the open store after each round."""
    cfg = RunConfig(db=db, settings=settings, topics=topics, **config)
    with Store(db) as store:
        runner = MicroBatchRunner(cfg, store)
        try:
            for round_docs in rounds:
                send_events(settings, topics, round_docs)
                assert runner.run_once(), "a round landed nothing"
                if after_round is not None:
                    after_round(store)
        finally:
            runner.close()


def wal_bytes(db: Path) -> int:
    """The size of the store's write-ahead log (``<db>.wal``); 0 when there is none."""
    wal = Path(f"{db}.wal")
    return wal.stat().st_size if wal.exists() else 0


def table(db: Path, query: str) -> list[tuple]:
    with duckdb.connect(str(db), read_only=True) as con:
        con.execute("SET TimeZone = 'UTC'")
        return con.execute(query).fetchall()


def journeys(db: Path) -> list[tuple]:
    return table(db, f"SELECT {JOURNEY_COLUMNS} FROM journeys ORDER BY journey_id")


def examples(count: int) -> int:
    """A test's Hypothesis example count, multiplied under the "explore" profile (tests/conftest.py)."""
    import os

    if os.environ.get("CXJ_HYPOTHESIS_PROFILE") == "explore":
        return count * int(os.environ.get("CXJ_HYPOTHESIS_SCALE", "50"))
    return count
