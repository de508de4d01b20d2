"""While a backlog is read, the replica publish is deferred; readers never lose what landed.

A publish is the largest fixed cost of a batch, and one publish covers every batch landed since
the last one, so `run` publishes a batch with more records behind it only when the last publish
is ``REPLICA_DEFER_MAX_S`` old, and always once the backlog is read (the batch that reaches the
end offsets, an idle look-up, the writer's close, and the next start after a writer died).
Real broker, real DuckDB file, real DuckLake replica; after every run the replica holds exactly
the database's rows (tests/test_replica_incremental.py compares them table by table).
"""
from __future__ import annotations

from pathlib import Path

import pipelines.storage.store as store_module
from pipelines.local.microbatch import MicroBatchRunner, RunConfig, RunListener
from pipelines.storage.store import Store
from tests.support import new_topics, send_events
from tests.test_replica_incremental import assert_replica_equals_database, rounds

BATCH = 40


class _PublishedAtLanding(RunListener):
    """The replica's last published batch, read right after each batch landed."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.seen: list[tuple[int, int]] = []  # (landed batch, published batch)

    def batch_landed(self, batch, positions) -> None:  # type: ignore[no-untyped-def]
        self.seen.append((batch.batch_id, self.store.replica.published_batch_id()))


def _backlog(broker) -> tuple[dict[str, str], int]:  # type: ignore[no-untyped-def]
    """Every round of the incremental-publish scenario at once: merges, moves, late threads,
    winning copies; read in batches of BATCH records, so journeys change across batches."""
    topics = new_topics(broker)
    sent = sum(send_events(broker, topics, docs) for docs in rounds())
    return topics, sent


def _run(db: Path, broker, topics: dict[str, str]) -> tuple[list[tuple[int, int]], int]:  # type: ignore[no-untyped-def]
    with Store(db) as store:
        assert store.replica is not None
        runner = MicroBatchRunner(RunConfig(db=db, settings=broker, topics=topics, max_batch_events=BATCH), store)
        listener = _PublishedAtLanding(store)
        runner.listeners.append(listener)
        try:
            batches = runner.run_once()
        finally:
            runner.close()
        last = batches[-1].batch_id
        assert store.replica.published_batch_id() == last, "run --once returned with batches unpublished"
        assert_replica_equals_database(store, last)
        return listener.seen, sum(b.consumed for b in batches)


def test_a_backlog_is_published_once_it_is_read(broker, tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "REPLICA_DEFER_MAX_S", 3600.0)  # no publish is old enough meanwhile
    topics, sent = _backlog(broker)
    seen, consumed = _run(tmp_path / "deferred.duckdb", broker, topics)
    assert consumed == sent and len(seen) >= 4, seen
    last = seen[-1][0]
    # the first batch publishes (nothing was published yet), the ones in between defer, and the
    # batch that reaches the end offsets publishes all of them in one go
    assert seen == [(1, 1)] + [(b, 1) for b in range(2, last)] + [(last, last)]


def test_a_long_backlog_still_publishes_every_so_often(broker, tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "REPLICA_DEFER_MAX_S", 0.0)  # every publish is old enough
    topics, _ = _backlog(broker)
    seen, _ = _run(tmp_path / "every.duckdb", broker, topics)
    assert seen == [(b, b) for b, _ in seen]


def test_batches_a_dead_writer_left_unpublished_are_published_at_the_next_start(broker, tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "REPLICA_DEFER_MAX_S", 3600.0)
    topics, _ = _backlog(broker)
    db = tmp_path / "died.duckdb"
    store = Store(db)
    runner = MicroBatchRunner(RunConfig(db=db, settings=broker, topics=topics, max_batch_events=BATCH), store)
    landed = [runner.run_batch() for _ in range(3)]
    assert [b.batch_id for b in landed if b is not None] == [1, 2, 3]
    assert store.replica.published_batch_id() == 1  # batches 2 and 3 wait for the backlog's end
    # the writer dies: nothing more is published, its connections just go away
    runner.close()
    store.replica.close()
    store.con.close()
    with Store(db) as reopened:
        assert reopened.replica.published_batch_id() == 3
        assert_replica_equals_database(reopened, 3)
