"""The landing finds which of a batch's events are landed already by their ids' 64-bit digests
(event_id_digests; docs/performance.md, "Looking up landed events by digest"). These tests try
to make an event land twice, or not at all, through that table: digests missing, out of step
with events, or shared by two ids, on a real store fed by the real broker."""
from __future__ import annotations

import duckdb
import pytest

from pipelines.storage.store import Store, StoreError
from tests.support import new_topics, run_once, send_events, table
from tests.test_events_without_key import docs, land_with

IN_STEP = """SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM event_id_digests),
                    (SELECT count(*) FROM (SELECT md5_number_lower(event_id) FROM events
                                           EXCEPT ALL SELECT id_digest FROM event_id_digests))"""


@pytest.mark.parametrize("lose", [
    "DROP TABLE event_id_digests",  # a store made before the table existed
    "DELETE FROM event_id_digests WHERE id_digest % 3 = 0",  # events written by something other than the landing
])
def test_missing_digests_are_rebuilt_at_open_and_every_copy_is_still_a_duplicate(broker, tmp_path, caplog, lose):
    topics = new_topics(broker)
    db = tmp_path / "journeys.duckdb"
    send_events(broker, topics, docs("a", 60))
    run_once(db, broker, topics)
    with duckdb.connect(str(db)) as con:
        con.execute(lose)
    caplog.set_level("INFO", logger="cxj")

    with Store(db):
        pass

    assert "digested the event ids" in caplog.text
    assert table(db, IN_STEP) == [(60, 60, 0)]
    send_events(broker, topics, docs("a", 60) + docs("b", 20))  # every landed event again, and new ones
    run_once(db, broker, topics)
    assert table(db, "SELECT count(*), count(DISTINCT event_id) FROM events") == [(80, 80)]
    assert table(db, "SELECT sum(consumed), sum(landed), sum(duplicates) FROM pipeline_batches") == [(140, 80, 60)]
    assert table(db, IN_STEP) == [(80, 80, 0)]
    caplog.clear()
    with Store(db):  # in step now: not rebuilt again
        pass
    assert "digest" not in caplog.text


def test_a_digest_shared_by_two_ids_does_not_make_a_new_event_a_copy(broker, tmp_path):
    """Two ids can share a 64-bit digest. Here the stored digest of a-3 is made that of b-3, which
    is not landed: b-3 must land as new, because only ids are compared in the end."""
    topics = new_topics(broker)
    db = tmp_path / "journeys.duckdb"
    send_events(broker, topics, docs("a", 30))
    run_once(db, broker, topics)
    with duckdb.connect(str(db)) as con:
        con.execute("UPDATE event_id_digests SET id_digest = md5_number_lower('b-3') WHERE id_digest = md5_number_lower('a-3')")

    send_events(broker, topics, docs("b", 30))
    run_once(db, broker, topics)

    assert table(db, "SELECT landed, duplicates FROM pipeline_batches WHERE batch_id = 2") == [(30, 0)]
    assert table(db, "SELECT count(*) FROM events WHERE event_id = 'b-3'") == [(1,)]
    assert table(db, "SELECT count(*) FROM event_conflicts") == [(0,)]


def test_digests_out_of_step_with_events_fail_the_landing_and_keep_nothing(broker, tmp_path):
    topics = new_topics(broker)
    db = tmp_path / "journeys.duckdb"
    send_events(broker, topics, docs("a", 30))
    run_once(db, broker, topics)
    send_events(broker, topics, docs("a", 30)[:10] + docs("b", 30))
    offsets = table(db, 'SELECT topic, "partition", next_offset FROM pipeline_offsets ORDER BY ALL')

    def lose_a_digest(con: duckdb.DuckDBPyConnection) -> None:
        con.execute("DELETE FROM event_id_digests WHERE id_digest = md5_number_lower('a-1')")

    with pytest.raises(StoreError, match="landing batch 2 .* nothing of it was kept.*event_id_digests 29"):
        land_with(db, broker, topics, lose_a_digest)

    assert table(db, "SELECT count(*) FROM events") == [(30,)]
    assert table(db, 'SELECT topic, "partition", next_offset FROM pipeline_offsets ORDER BY ALL') == offsets
    run_once(db, broker, topics)  # the next start rebuilds the digests; a-1 is a duplicate again
    assert table(db, "SELECT count(*), count(DISTINCT event_id) FROM events") == [(60, 60)]
    assert table(db, "SELECT landed, duplicates FROM pipeline_batches WHERE batch_id = 2") == [(30, 10)]
    assert table(db, IN_STEP) == [(60, 60, 0)]
