"""The map from customers to the blocks of their events (pipelines/storage/event_blocks.py)
through the real pipeline: random deliveries (late events, duplicates, conflicting copies that
move an event to another customer) land over several rounds into a store whose blocks are 3
rows long and whose every table is read by row id ranges, so every batch reads its customers'
history through the map. The journeys must equal the oracle's, and after every round the map
must hold every (customer, block) pair of the events table and cover all of it.

At the real block size (122,880 rows) a test store this small is read in one step and the map
would never be used; pipelines/storage/event_blocks_test.py tests it at that size on 614k rows.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from hypothesis import HealthCheck, Phase, given, settings

from pipelines.storage import store as store_module
from pipelines.storage.event_blocks import MAP_TABLE, covered_rows
from pipelines.storage.replica import lake_dir
from pipelines.storage.store import Store
from tests.support import examples, land_in_rounds, new_topics, run_once, send_events, table
from tests.test_conflicting_duplicates import replacing_pair
from tests.test_golden import db_rows
from tests.test_properties import Deliveries, canonical, deliveries, oracle_links, oracle_rows

TINY_BLOCK = 3


def read_through_tiny_blocks(patch: pytest.MonkeyPatch) -> None:
    """Blocks of 3 rows, ranges for tables of any size and any width: the map is always used.
    (Not an infinite share: a first batch on an empty table would compare with inf * 0.)"""
    patch.setattr(store_module, "ROW_BLOCK", TINY_BLOCK)
    patch.setattr(store_module, "TWO_STEP_MIN_ROWS", 0)
    patch.setattr(store_module, "WIDEST_RANGES_SHARE", 1e9)


@pytest.fixture
def tiny_blocks(monkeypatch):
    read_through_tiny_blocks(monkeypatch)


def map_holds_every_pair(store: Store) -> None:
    con = store.con
    events = con.execute("SELECT count(*) FROM events").fetchone()[0]
    assert covered_rows(con, TINY_BLOCK) == events
    missing = con.execute(f"""SELECT count(*) FROM (
                                SELECT DISTINCT md5_number_lower(customer_id), rowid // {TINY_BLOCK} FROM events
                                EXCEPT SELECT customer_digest, block FROM {MAP_TABLE})""").fetchone()[0]
    assert missing == 0, "a customer's events lie in a block the map does not name"


@settings(max_examples=examples(4), deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large])
@given(d=deliveries(max_customers=5, max_lateness=6, max_rounds=3, max_batches_per_round=2))
def test_batches_read_through_the_map_land_what_the_oracle_says(broker, tmp_path_factory, tiny_blocks, d: Deliveries):
    topics = new_topics(broker)
    db = tmp_path_factory.mktemp("blocks") / "tiny.duckdb"
    looked_up: list[int] = []
    found = store_module.Store._touched_stretches

    def counted(store: Store, table: str, customers: str, rows: int):  # type: ignore[no-untyped-def]
        stretches, mapped = found(store, table, customers, rows)
        looked_up.append(mapped)
        return stretches, mapped

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(store_module.Store, "_touched_stretches", counted)
        land_in_rounds(db, broker, topics, d.rounds, map_holds_every_pair, max_batch_events=d.max_batch_events)
    assert True in looked_up, "no batch read events through the map"
    assert canonical(db_rows(db, "")) == oracle_rows(d.lines)
    assert sorted(table(db, "SELECT event_id, journey_id FROM journey_events")) == oracle_links(d.lines)
    sent = len(d.all_sent)
    landed = table(db, "SELECT count(*), count(DISTINCT event_id) FROM events")[0]
    assert landed[0] == landed[1]
    assert table(db, "SELECT sum(consumed), sum(landed) + sum(duplicates) + sum(dead_letters) FROM pipeline_batches") == [
        (sent, sent)]


def ticket(event_id: str, customer: str, minute: int) -> dict:
    return {"event_id": event_id, "event_type": "ticket.created", "occurred_at": f"2026-08-01T10:{minute:02d}:00Z",
            "customer_id": customer, "schema_version": 1, "ticket_id": f"T-{event_id}", "channel": "email"}


def test_an_event_a_winning_copy_moves_to_another_customer_is_in_that_customers_history(broker, tmp_path):
    """The copy of pair-1 that wins moves it from pair-A to pair-B, whose own events lie in
    other blocks. A later batch that touches only pair-B reads its history through the map:
    without the pair (pair-B, pair-1's block) it would miss pair-1, and pair-B's journeys would differ
    from those of the same events landed in one batch."""
    loser_message, winner_message, loser, winner = replacing_pair()
    # 6 rows (blocks 0 and 1), then pair-B's first event alone (row 6, block 2), the copy, and
    # pair-B's second event alone (row 7, block 2)
    rounds = [[loser] + [ticket(f"fill-{i}", f"filler-{i}", i) for i in range(5)], [ticket("b-1", "pair-B", 20)],
              [winner], [ticket("b-2", "pair-B", 40)]]
    topics = new_topics(broker)
    db = tmp_path / "moved.duckdb"
    with pytest.MonkeyPatch.context() as patch:
        read_through_tiny_blocks(patch)
        land_in_rounds(db, broker, topics, rounds, map_holds_every_pair)
    [(moved_block,)] = table(db, "SELECT rowid // 3 FROM events WHERE event_id = 'pair-1' AND customer_id = 'pair-B'")
    own_blocks = {b for (b,) in table(db, "SELECT rowid // 3 FROM events WHERE event_id LIKE 'b-%'")}
    assert moved_block not in own_blocks, "pair-1 lies beside pair-B's own events: the map would not matter"
    one_db = tmp_path / "one.duckdb"
    one_topics = new_topics(broker)
    send_events(broker, one_topics, [doc for r in rounds for doc in r])
    run_once(one_db, broker, one_topics)
    journeys = "SELECT journey_id, customer_id, event_count, touchpoint_count FROM journeys ORDER BY ALL"
    links = "SELECT event_id, journey_id FROM journey_events ORDER BY ALL"
    assert table(db, journeys) == table(one_db, journeys)
    assert table(db, links) == table(one_db, links)
    assert ("pair-1",) in table(db, "SELECT event_id FROM journey_events WHERE customer_id = 'pair-B'")


def check_report(db: Path) -> tuple[int, dict]:
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", "check", "--db", str(db), "--json", "--no-store"],
                          capture_output=True, text=True, timeout=300)
    return done.returncode, json.loads(done.stdout)


def map_result(report: dict) -> list[dict]:
    return [r for r in report["results"] if r["table"] == MAP_TABLE]


def test_cxj_check_finds_events_the_map_does_not_lead_to(broker, tmp_path):
    """A pair missing from the map is the fault its own count cannot show (a batch would read
    that customer's history without the events in that block): `cxj check` on the database
    itself counts the events the map does not lead to and names their customers. The read
    replica carries no map, so a check of the replica says nothing about it."""
    topics = new_topics(broker)
    db = tmp_path / "checked.duckdb"
    send_events(broker, topics, [ticket(f"k-{i}", f"kept-{i % 3}", i) for i in range(9)])
    run_once(db, broker, topics)
    code, report = check_report(db)  # through the replica
    assert code == 0 and report["source"] == "replica" and map_result(report) == [], report
    shutil.rmtree(lake_dir(db))  # a database without a replica: its one-shot readers read it directly
    code, report = check_report(db)
    assert code == 0 and report["source"] == "database", report
    assert [(r["success"], r["unexpected_count"]) for r in map_result(report)] == [(True, 0)]
    with duckdb.connect(str(db)) as con:
        con.execute(f"DELETE FROM {MAP_TABLE} WHERE customer_digest = md5_number_lower('kept-1')")
    code, report = check_report(db)
    [found] = map_result(report)
    assert code == 1 and report["success"] is False
    assert (found["success"], found["unexpected_count"], found["examples"]) == (False, 3, ["kept-1"])
