"""A long run does not keep what it read of files it no longer has.

Every batch reads its staged Parquet files once (pipelines/storage/store.py, ``_load_staged``)
and removes them; the read replica writes and rewrites DuckLake data files. DuckDB's external
file cache would keep ranges of each file it read, and its bookkeeping per file in native memory
outside the memory limit, until the database closes: over 400k events an open store gained 17 MB
of memory in use with the cache, 7 MB without (docs/performance.md, "Native memory held for
Parquet files read once"). The test lands real batches through the real broker, with the
replica on, into a store kept open, and looks at what DuckDB itself reports holding.
"""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from pipelines.kafka.settings import KafkaSettings
from pipelines.kafka.simulator import generate_customer_events
from pipelines.storage.store import Store
from tests.support import land_in_rounds, new_topics


def rounds_of_events(rounds: int, customers: int) -> list[list[dict]]:
    """Simulated events split into ``rounds`` parts in the order they happened."""
    events = generate_customer_events(customers, 11, datetime(2026, 6, 1, tzinfo=timezone.utc))
    size = -(-len(events) // rounds)
    return [events[i:i + size] for i in range(0, len(events), size)]


def test_a_store_kept_open_holds_nothing_of_the_files_its_batches_read(broker: KafkaSettings, db: Path) -> None:
    topics = new_topics(broker)
    rounds = rounds_of_events(3, 60)
    after: dict[str, int] = {}

    def holds_no_cached_file(store: Store) -> None:
        assert store.replica is not None, "the replica's own files are part of what is read"
        batch = store.next_batch_id() - 1
        cached = store.con.execute("SELECT DISTINCT path FROM duckdb_external_file_cache()").fetchall()
        assert cached == [], f"after batch {batch}, DuckDB still caches {len(cached)} files: {cached[:3]}"
        held = store.con.execute(
            "SELECT coalesce(sum(memory_usage_bytes), 0) FROM duckdb_memory() WHERE tag = 'EXTERNAL_FILE_CACHE'").fetchone()[0]
        assert held == 0, f"after batch {batch}, DuckDB holds {held} bytes of cached files"
        after["accounted"] = sum(store.count(t) for t in ("events", "dead_letters", "event_conflicts", "duplicate_deliveries"))
        after["published"] = store.replica.published_batch_id() or 0

    land_in_rounds(db, broker, topics, rounds, after_round=holds_no_cached_file)
    assert after["accounted"] == sum(len(docs) for docs in rounds), \
        "every record sent was read from the staged files and accounted for"
    assert after["published"] >= 3, "the replica published (its files were written and read)"
