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
from pipelines.local.microbatch import MicroBatchRunner, RunConfig
from pipelines.storage.store import Store
from tests.support import new_topics, send_events


def rounds_of_events(rounds: int, customers: int) -> list[list[dict]]:
    """Simulated events split into ``rounds`` parts in the order they happened."""
    events = generate_customer_events(customers, 11, datetime(2026, 6, 1, tzinfo=timezone.utc))
    size = -(-len(events) // rounds)
    return [events[i:i + size] for i in range(0, len(events), size)]


def test_a_store_kept_open_holds_nothing_of_the_files_its_batches_read(broker: KafkaSettings, db: Path) -> None:
    topics = new_topics(broker)
    sent = 0
    with Store(db) as store:
        assert store.replica is not None, "the replica's own files are part of what is read"
        runner = MicroBatchRunner(RunConfig(db=db, settings=broker, topics=topics), store)
        try:
            for docs in rounds_of_events(3, 60):
                sent += send_events(broker, topics, docs)
                landed = runner.run_once()
                assert landed, "each round lands a batch"
                cached = store.con.execute("SELECT DISTINCT path FROM duckdb_external_file_cache()").fetchall()
                assert cached == [], f"after batch {landed[-1].batch_id}, DuckDB still caches {len(cached)} files: {cached[:3]}"
                held = store.con.execute(
                    "SELECT coalesce(sum(memory_usage_bytes), 0) FROM duckdb_memory() WHERE tag = 'EXTERNAL_FILE_CACHE'").fetchone()[0]
                assert held == 0, f"DuckDB holds {held} bytes of cached files"
        finally:
            runner.close()
        accounted = sum(store.con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                        for t in ("events", "dead_letters", "event_conflicts", "duplicate_deliveries"))
        published = store.replica.published_batch_id()
    assert accounted == sent, "every record sent was read from the staged files and accounted for"
    assert published is not None and published >= 3, "the replica published (its files were written and read)"
