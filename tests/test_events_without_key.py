"""The events table has no primary key (docs/performance.md, "The events table without a key"):
the landing itself keeps an event from landing twice. These tests try to make it land one twice
on a real store fed by the real broker, and open a store made with the key, as earlier versions
made it."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

import duckdb
import pytest

from pipelines.storage.store import BatchNotAccounted, Store, StoreError
from tests.support import new_topics, run_once, send_events, table

ROWS = "SELECT * EXCLUDE (landed_at) FROM events ORDER BY event_id"


def docs(prefix: str, n: int) -> list[dict[str, Any]]:
    start = datetime(2026, 9, 1, tzinfo=timezone.utc)
    return [{"event_id": f"{prefix}-{i}", "event_type": "ticket.created", "customer_id": f"{prefix}{i % 5}",
             "schema_version": 1, "occurred_at": (start + timedelta(minutes=i)).isoformat(),
             "ticket_id": f"{prefix}T{i}", "channel": "email"} for i in range(n)]


def keyed(db: Path) -> list[str]:
    return [row[1] for row in table(db, "PRAGMA table_info('events')") if row[5]]


def land_with(db: Path, broker, topics: dict[str, str], after_lookup: Callable[[duckdb.DuckDBPyConnection], None]) -> None:
    """run --once, with ``after_lookup`` run on the writer's connection between the batch's
    look-up of landed copies and its landing."""
    def meddle_after_lookup(store: Store) -> None:
        resolve = store.resolve_copies

        def resolve_then_meddle(*args: Any, **kwargs: Any) -> Any:
            resolution = resolve(*args, **kwargs)
            after_lookup(store.con)
            return resolution

        store.resolve_copies = resolve_then_meddle  # type: ignore[method-assign]

    run_once(db, broker, topics, prepare=meddle_after_lookup)


def test_a_store_made_with_the_key_is_rebuilt_without_it_keeping_every_event(broker, tmp_path, caplog):
    topics = new_topics(broker)
    db = tmp_path / "journeys.duckdb"
    send_events(broker, topics, docs("a", 60))
    run_once(db, broker, topics)
    with duckdb.connect(str(db)) as con:  # the table as earlier versions created it
        con.execute("ALTER TABLE events ADD PRIMARY KEY (event_id)")
    assert keyed(db) == ["event_id"]
    before = table(db, ROWS)
    caplog.set_level("INFO", logger="cxj")
    caplog.clear()  # only what the next open logs

    with Store(db):
        pass

    assert "rebuilt the events table without its primary key" in caplog.text
    assert keyed(db) == []
    assert table(db, ROWS) == before
    # the copy may number the rows anew, so the map of their blocks is made again after it
    assert caplog.text.index("mapped the customers' row blocks") > caplog.text.index("rebuilt the events table")
    assert table(db, "SELECT events FROM customer_event_blocks_covered") == [(60,)]
    # then every copy delivered again is still a duplicate, and new events land once
    send_events(broker, topics, docs("a", 60)[::3] + docs("b", 20))
    run_once(db, broker, topics)
    assert table(db, "SELECT count(*), count(DISTINCT event_id) FROM events") == [(80, 80)]
    assert table(db, "SELECT sum(consumed), sum(landed), sum(duplicates) FROM pipeline_batches") == [(100, 80, 20)]
    caplog.clear()
    with Store(db):  # rebuilt once only
        pass
    assert "primary key" not in caplog.text


def test_an_event_landed_after_the_look_up_fails_the_landing_and_keeps_nothing(broker, tmp_path):
    """Whatever adds to events between a batch's look-up of landed copies and its landing (here a
    stray copy of one of the batch's own events) makes that look-up stale: the batch must not
    land, or that event would be there twice."""
    topics = new_topics(broker)
    db = tmp_path / "journeys.duckdb"
    send_events(broker, topics, docs("a", 30))
    run_once(db, broker, topics)
    send_events(broker, topics, docs("b", 30))
    offsets = table(db, 'SELECT topic, "partition", next_offset FROM pipeline_offsets ORDER BY ALL')

    def land_one_of_its_events(con: duckdb.DuckDBPyConnection) -> None:
        con.execute("INSERT INTO events SELECT * REPLACE ('b-7' AS event_id) FROM events WHERE event_id = 'a-7'")

    with pytest.raises(StoreError, match="landing batch 2 .* nothing of it was kept.*look-up no longer holds"):
        land_with(db, broker, topics, land_one_of_its_events)

    assert table(db, "SELECT count(*) FROM events WHERE event_id LIKE 'b-%'") == [(1,)]  # only the stray row
    assert table(db, 'SELECT topic, "partition", next_offset FROM pipeline_offsets ORDER BY ALL') == offsets
    assert table(db, "SELECT count(*) FROM pipeline_batches") == [(1,)]
    with duckdb.connect(str(db)) as con:
        con.execute("DELETE FROM events WHERE event_id = 'b-7'")
    run_once(db, broker, topics)
    assert table(db, "SELECT count(*), count(DISTINCT event_id) FROM events") == [(60, 60)]


def test_a_batch_that_names_an_event_twice_does_not_land(broker, tmp_path):
    """The batch's rows to insert are de-duplicated before the landing; if one were there twice
    (here put there by hand), the landing's accounting refuses the batch."""
    topics = new_topics(broker)
    db = tmp_path / "journeys.duckdb"
    send_events(broker, topics, docs("c", 30))

    def name_one_twice(con: duckdb.DuckDBPyConnection) -> None:
        con.execute("INSERT INTO batch_events SELECT * FROM batch_events WHERE event_id = 'c-3'")

    with pytest.raises(BatchNotAccounted, match="batch 1: consumed 30 but accounted for 31"):
        land_with(db, broker, topics, name_one_twice)

    assert table(db, "SELECT count(*) FROM events") == [(0,)]
    run_once(db, broker, topics)
    assert table(db, "SELECT count(*), count(DISTINCT event_id) FROM events") == [(30, 30)]
