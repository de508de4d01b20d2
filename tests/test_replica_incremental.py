"""The read replica publishes only the journeys a batch rewrote or removed, and still shows
exactly the database's rows after every batch.

Lands rounds of events through the real pipeline (real broker, real DuckDB file, real DuckLake
replica), one batch per round, and after each batch compares every replica table with the
database row for row. The rounds hold what makes an incremental publish hard: a long history
whose settled journeys are left as landed (pruned batches), journeys that merge (a late thread
joins two journeys: one id disappears), a journey whose id changes (a late thread before
everything), a split (a winning copy moves the middle thread to another customer), a customer
whose only journey moves away entirely, a reopening months later (the customer recomputed
whole), conflicting copies, plain duplicates and a survey of a thread that appears later.

The replica must never have been rebuilt meanwhile (a rebuild after a disagreement would hide
a wrong publish), and each publish must have copied only the rows of the journeys the batch
wrote (read from DuckLake's own change feed of the publishing snapshot).
"""
from __future__ import annotations

import random
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from pipelines.local.microbatch import MicroBatchRunner, RunConfig
from pipelines.storage.lake_target import parse_lake
from pipelines.storage.replica import LAKE_ALIAS, META_TABLE, PER_CUSTOMER, TABLES
from pipelines.storage.store import Store
from tests.support import examples, new_topics, send_events
from tests.test_history_pruning import long_histories
from transforms.dedup import content_hash

BASE = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)


def ev(customer: str, event_id: str, event_type: str, day: float, **fields: Any) -> dict[str, Any]:
    doc = {"event_id": event_id, "event_type": event_type, "occurred_at": (BASE + timedelta(days=day)).isoformat(),
           "customer_id": customer, "schema_version": 1}
    doc.update(fields)
    return doc


def ticket(customer: str, tid: str, day: float, solved: bool = True) -> list[dict[str, Any]]:
    out = [ev(customer, f"{customer}-{tid}-c", "ticket.created", day, ticket_id=tid, channel="email"),
           ev(customer, f"{customer}-{tid}-a", "ticket.assigned", day + 0.01, ticket_id=tid, handler_type="agent",
              agent_id="a1", team="t1"),
           ev(customer, f"{customer}-{tid}-m", "ticket.message", day + 0.02, ticket_id=tid, author="agent", channel="email")]
    if solved:
        out.append(ev(customer, f"{customer}-{tid}-s", "ticket.status_changed", day + 0.2, ticket_id=tid, status="solved"))
    return out


def winning_copy(doc: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A conflicting copy of ``doc`` with ``changes`` that beats it (smaller content hash)."""
    for n in range(10_000):
        copy = {**doc, **changes, "note": f"copy {n}"}
        if content_hash(copy) < content_hash(doc):
            return copy
    raise AssertionError("no winning copy found")


def losing_copy(doc: dict[str, Any]) -> dict[str, Any]:
    for n in range(10_000):
        copy = {**doc, "note": f"late copy {n}"}
        if content_hash(copy) > content_hash(doc):
            return copy
    raise AssertionError("no losing copy found")


def rounds() -> list[list[dict[str, Any]]]:
    """Five rounds; each is landed as one batch."""
    first: list[dict] = []
    # a long history: 25 tickets 10 days apart (separate journeys that settle), all in the past
    for t in range(25):
        first += ticket("long", f"L{t}", t * 10.0)
    # merge: two journeys 4.8 days apart (more than the 72 h repeat window); round 2 brings a
    # thread between them that joins both
    first += ticket("merge", "M1", 0) + ticket("merge", "M2", 5)
    # id change: round 2 brings a thread 3 days before the only one
    first += ticket("early", "E1", 10)
    # split: three tickets 2.5 days apart form one journey; round 3 moves the middle one away
    split = ticket("split", "S1", 0) + ticket("split", "S2", 2.5) + ticket("split", "S3", 5)
    first += split
    # moved away entirely: the only ticket's events are moved to another customer in round 3
    gone = ticket("gone", "G1", 3, solved=False)
    first += gone
    # a survey that names a ticket landed only later, and an old ticket reopened much later
    first += [ev("survey", "survey-s1", "survey.responded", 2, survey_id="SV1", ticket_id="Q1", csat=4, nps=8)]
    first += ticket("reopen", "R1", 0) + ticket("reopen", "R2", 40)

    second: list[dict] = []
    second += ticket("long", "L25", 250)  # 10 days after L24: L0..L23 settle
    second += ticket("merge", "M15", 2.5)
    second += ticket("early", "E0", 7)
    second += ticket("survey", "Q1", 1)
    reopen = [d for d in first if d["customer_id"] == "reopen"]
    second += [losing_copy(reopen[0]), reopen[1]]  # a conflicting copy that loses, and a plain duplicate

    third: list[dict] = []
    third += [winning_copy(d, customer_id="split-elsewhere") for d in split[4:8]]  # S2 moves: S1 | S3 split
    third += [winning_copy(d, customer_id="gone-elsewhere") for d in gone]  # the customer's only journey leaves
    third += ticket("long", "L26", 253)  # joins L25's journey; L24 settles now too

    fourth: list[dict] = []
    fourth += [ev("reopen", "reopen-late", "ticket.status_changed", 120, ticket_id="R1", status="open")]
    fourth += [winning_copy(first[2], agent_id="a9")]  # an old event of the long history replaced in place
    fourth += ticket("fresh", "F1", 100)

    fifth: list[dict] = [ev("merge", "merge-late", "ticket.status_changed", 30, ticket_id="M2", status="open")]
    return [first, second, third, fourth, fifth]


def mine(store: Store) -> str:
    """The condition on the replica rows of this store: all of them, or a shared lake writer's."""
    writer = getattr(store.replica, "writer_id", "")
    return f"writer_id = '{writer}'" if writer else "true"


def table_rows(con, relation: str) -> list[str]:
    """The rows of ``relation`` as sorted JSON texts (a multiset any two catalogs can be compared by)."""
    return sorted(r[0] for r in con.execute(f"SELECT to_json(t)::VARCHAR FROM ({relation}) t").fetchall())


def assert_replica_equals_database(store: Store, batch_id: int) -> None:
    con, source = store.replica.con, store.replica.source
    for table in TABLES:
        # the database's columns in its order: a column added to an older shared lake comes last there
        columns = ", ".join(f'"{row[0]}"' for row in con.execute(f"DESCRIBE {source}.{table}").fetchall())
        database = table_rows(con, f"SELECT {columns} FROM {source}.{table}")
        replica = table_rows(con, f"SELECT {columns} FROM {LAKE_ALIAS}.{table} WHERE {mine(store)}")
        assert replica == database, f"batch {batch_id}: replica table {table} differs from the database"


def _feed(store: Store, kind: str, table: str) -> str:
    """DuckLake's change feed of ``table`` in the replica's latest snapshot (this store's rows)."""
    con = store.replica.con
    snapshot = con.execute(f"SELECT max(snapshot_id) FROM ducklake_snapshots('{LAKE_ALIAS}')").fetchone()[0]
    return (f"SELECT * FROM ducklake_table_{kind}('{LAKE_ALIAS}', 'main', '{table}', {snapshot}, {snapshot}) "
            f"WHERE {mine(store)}")


def last_publish_changes(store: Store) -> dict[str, tuple[int, int]]:
    """(rows inserted, rows deleted) per journey table by the replica's latest snapshot."""
    con = store.replica.con
    return {table: tuple(con.execute(f"SELECT count(*) FROM ({_feed(store, kind, table)})").fetchone()[0]  # type: ignore[misc]
                         for kind in ("insertions", "deletions")) for table in PER_CUSTOMER}


def last_publish_inserted(store: Store, table: str, customer: str) -> int:
    """Rows of ``customer`` the replica's latest snapshot inserted into ``table``."""
    return store.replica.con.execute(
        f"SELECT count(*) FROM ({_feed(store, 'insertions', table)}) WHERE customer_id = ?", [customer]).fetchone()[0]


def land_and_compare(broker, db: Path, batches: list[list[dict[str, Any]]], lake: Any = None) -> list[dict[str, Any]]:
    """Lands each round as one batch; after each, the replica equals the database, was not
    rebuilt, and its latest snapshot inserted only the rows of journeys this batch wrote.
    ``lake``: publish to that shared lake (shared_lake.py) instead of the local replica."""
    topics = new_topics(broker)
    seen: list[dict[str, Any]] = []
    with Store(db, lake=lake) as store:
        assert store.replica is not None
        runner = MicroBatchRunner(RunConfig(db=db, settings=broker, topics=topics, max_batch_events=1_000_000), store)
        rebuilt_at = None
        try:
            for docs in batches:
                send_events(broker, topics, docs)
                landed = runner.run_once()
                assert len(landed) == 1, "each round is one batch"
                batch_id = landed[0].batch_id
                assert store.replica.published_batch_id() == batch_id
                assert_replica_equals_database(store, batch_id)
                meta = store.replica.con.execute(
                    f"SELECT rebuilt_at FROM {LAKE_ALIAS}.{META_TABLE} WHERE {mine(store)}").fetchone()[0]
                assert rebuilt_at in (None, meta), f"batch {batch_id}: the replica was rebuilt instead of published"
                rebuilt_at = meta
                con, source = store.replica.con, store.replica.source
                written = f"SELECT journey_id FROM {source}.journeys WHERE batch_id = {batch_id}"
                expected = {t: con.execute(f"SELECT count(*) FROM {source}.{t} WHERE journey_id IN ({written})").fetchone()[0]
                            for t in PER_CUSTOMER}
                changes = last_publish_changes(store)
                assert {t: c[0] for t, c in changes.items()} == expected, f"batch {batch_id} copied other rows"
                seen.append({"batch_id": batch_id, "settled": landed[0].extra.get("settled_journeys", {}), "changes": changes,
                             "long_links_copied": last_publish_inserted(store, "journey_events", "long")})
        finally:
            runner.close()
    return seen


@pytest.mark.parametrize("target", ["replica", "shared_lake"])
def test_every_batch_publishes_only_changed_journeys_and_the_replica_equals_the_database(broker, tmp_path, request, target):
    db = tmp_path / "incremental.duckdb"
    lake = None
    if target == "shared_lake":  # a DuckLake with a PostgreSQL catalog, this store as one writer
        postgres = request.getfixturevalue("postgres")
        lake = parse_lake(postgres.new_database("lake_incremental"), tmp_path / "lake-data")
    caplog = request.getfixturevalue("caplog")
    caplog.set_level("DEBUG", logger="cxj")
    seen = land_and_compare(broker, db, rounds(), lake)
    # the replica (or this writer's part of the shared lake) deleted the changed journeys' old rows
    # by the batch ids the store noted
    found = re.findall(r"replica: old rows of \d+ changed journeys (.*)", caplog.text)
    assert len(found) == len(seen) and all(f.startswith("in ") for f in found), found
    # the scenarios happened: settled journeys were left out, journeys disappeared, copies won
    assert [b["settled"].get("long", 0) for b in seen] == [0, 24, 25, 0, 0]
    with Store(db, read_only=True) as store:
        con = store.con
        removed = {r[0] for r in con.execute("SELECT customer_id FROM journey_revisions WHERE change = 'removed'").fetchall()}
        assert {"merge", "early", "gone"} <= removed
        assert con.execute("SELECT count(*) FROM journeys WHERE customer_id = 'gone'").fetchone()[0] == 0
        assert con.execute("SELECT count(*) FROM journeys WHERE customer_id = 'split'").fetchone()[0] == 2
        assert con.execute("SELECT count(*) FROM event_replacements").fetchone()[0] == 8
    # the long history's settled links were not copied again when its latest journeys changed:
    # round 2 rewrote L24 and L25 (8 links), round 3 the journey of L25 and L26 (8); round 4
    # replaced one of its old events, so the whole history (27 tickets) was recomputed
    assert [b["long_links_copied"] for b in seen] == [100, 8, 8, 108, 0]


@pytest.mark.parametrize("target", ["replica", "shared_lake"])
def test_a_store_landed_before_links_had_a_batch_id_is_filled_in_and_publishes_exactly(
        broker, tmp_path, request, target, monkeypatch, caplog):
    """journey_events gained batch_id (the publish reads only the window's row groups by it). A
    store and lake of the version before: round 1 landed and published, round 2 landed but not
    published (the writer stopped in between), then the column dropped from both. The new version
    must fill the column in (each link from its journey's batch), publish round 2 from the filled
    rows, and go on publishing the later rounds exactly, without a rebuild after a disagreement."""
    db = tmp_path / "older.duckdb"
    lake = None
    if target == "shared_lake":
        postgres = request.getfixturevalue("postgres")
        lake = parse_lake(postgres.new_database("lake_older_links"), tmp_path / "lake-data")
    first, second, *later = rounds()
    land_and_compare(broker, db, [first], lake)
    with Store(db, lake=lake) as store:
        assert store.replica is not None and store.replica.published_batch_id() == 1
        store.replica.con.execute(f"ALTER TABLE {LAKE_ALIAS}.journey_events DROP COLUMN batch_id")
        if lake is None:  # the local replica records the columns it was built from: those of the earlier version
            store.replica.con.execute(f"UPDATE {LAKE_ALIAS}.{META_TABLE} SET fingerprint = 'the earlier version'")
    monkeypatch.setenv("CXJ_REPLICA", "0")
    topics = new_topics(broker)
    send_events(broker, topics, second)
    with Store(db) as store:
        runner = MicroBatchRunner(RunConfig(db=db, settings=broker, topics=topics, max_batch_events=1_000_000), store)
        try:
            assert [b.batch_id for b in runner.run_once()] == [2]
        finally:
            runner.close()
        store.con.execute("ALTER TABLE journey_events DROP COLUMN batch_id")
    monkeypatch.delenv("CXJ_REPLICA")
    caplog.set_level("INFO", logger="cxj")

    with Store(db, lake=lake) as store:  # fills the column in, then publishes round 2
        assert "added journey_events.batch_id" in caplog.text
        con = store.con
        assert con.execute("SELECT count(*) FROM journey_events WHERE batch_id IS NULL").fetchone()[0] == 0
        assert con.execute("SELECT count(*) FROM journey_events e JOIN journeys j USING (journey_id) "
                           "WHERE e.batch_id <> j.batch_id").fetchone()[0] == 0
        assert {r[0] for r in con.execute("SELECT DISTINCT batch_id FROM journey_events").fetchall()} == {1, 2}
        assert store.replica is not None and store.replica.published_batch_id() == 2
        assert_replica_equals_database(store, 2)
    land_and_compare(broker, db, later, lake)

    assert "disagrees with the database" not in caplog.text


# ------------------------------------------------------------------ random long histories

@pytest.mark.slow
@settings(max_examples=examples(2), deadline=None, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(batches=long_histories(), seed=st.integers(0, 2**32 - 1))
def test_random_long_histories_publish_the_database_exactly(broker, tmp_path_factory, batches, seed):
    """Random long histories (reopenings and surveys of old threads, very late events) with
    winning copies of random landed events added to the later rounds."""
    rng = random.Random(seed)
    landed: list[dict[str, Any]] = []
    out = []
    for docs in batches:
        extra = [winning_copy(d, **({"customer_id": d["customer_id"] + "-moved"} if rng.random() < 0.3 else {}))
                 for d in rng.sample(landed, min(len(landed), 2))]
        out.append(docs + extra)
        landed += docs
    land_and_compare(broker, tmp_path_factory.mktemp("incremental") / "random.duckdb", out)
