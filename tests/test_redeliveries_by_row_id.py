"""Redelivered and conflicting copies of landed events, more of them than DuckDB pushes into a
scan by itself: the landing reads the landed rows by their row ids (Store._landed_copies,
Store._land_losing_copies, the in-place replacement), and must read exactly the rows of those
event ids.

The expected tables are worked out here from the documented rule, independently of the
implementation: per event_id the copy with the smallest SHA-256 of its canonical JSON is in
`events`; a later exact copy of the landed winner is a duplicate delivery; every delivery whose
content differs from the winner is a conflict (docs/performance.md, "Redelivered events read
by row id")."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import duckdb

from pipelines.storage.store import DUCKDB_PUSHED_FILTER_VALUES, Store
from tests.support import new_topics, run_once, send_events, table
from tests.test_conflicting_duplicates import content_hash

LANDED = 400
REDELIVERED = 120  # exact copies, later on the same partitions: the landed row stays
WINNING = 60  # conflicting copies with a smaller hash: they replace the landed row
LOSING = 60  # conflicting copies with a larger hash: conflicts, the landed row stays


def first_docs() -> list[dict[str, Any]]:
    start = datetime(2026, 9, 1, tzinfo=timezone.utc)
    return [{"event_id": f"rd-{i}", "event_type": "ticket.created", "customer_id": f"rdc{i % 37}",
             "schema_version": 1, "occurred_at": (start + timedelta(minutes=7 * i)).isoformat(),
             "ticket_id": f"rdT{i}", "channel": "email"} for i in range(LANDED)]


def conflicting(doc: dict[str, Any], smaller: bool) -> dict[str, Any]:
    """A copy of ``doc`` with another note, whose content hash is smaller (or larger) than the original's."""
    for n in range(10_000):
        copy = {**doc, "note": f"copy {n}"}
        if (content_hash(copy) < content_hash(doc)) == smaller:
            return copy
    raise AssertionError("no such copy")


def test_many_redelivered_and_conflicting_copies_land_by_the_rule(broker, tmp_path):
    topics = new_topics(broker)
    db = tmp_path / "journeys.duckdb"
    originals = first_docs()
    send_events(broker, topics, originals)
    run_once(db, broker, topics)
    redelivered = originals[:REDELIVERED]
    winners = [conflicting(d, smaller=True) for d in originals[REDELIVERED:REDELIVERED + WINNING]]
    losers = [conflicting(d, smaller=False) for d in originals[REDELIVERED + WINNING:REDELIVERED + WINNING + LOSING]]
    new = [{**d, "event_id": f"rd-new-{i}", "ticket_id": f"rdN{i}"} for i, d in enumerate(originals[:20])]
    send_events(broker, topics, redelivered + winners + losers + new)

    settings_seen: list[str] = []

    def watch_the_setting(store: Store) -> None:
        land = store.land

        def land_then_read_the_setting(*args: Any, **kwargs: Any) -> Any:
            landed = land(*args, **kwargs)
            settings_seen.append(store.con.execute("SELECT current_setting('dynamic_or_filter_threshold')").fetchone()[0])
            return landed
        store.land = land_then_read_the_setting  # type: ignore[method-assign]

    batches = run_once(db, broker, topics, prepare=watch_the_setting)
    consumed = REDELIVERED + WINNING + LOSING + len(new)
    assert [(b.consumed, b.landed, b.duplicates, b.dead_letters) for b in batches] == [
        (consumed, len(new), REDELIVERED + WINNING + LOSING, 0)]
    # what DuckDB does by itself is back after every landing (the setting is raised per statement)
    assert settings_seen == [DUCKDB_PUSHED_FILTER_VALUES]

    expected = {d["event_id"]: d for d in originals + new}
    expected.update({d["event_id"]: d for d in winners})
    stored = {event_id: json.loads(payload) for event_id, payload in table(db, "SELECT event_id, payload::VARCHAR FROM events")}
    assert stored == expected
    assert table(db, "SELECT count(*), count(DISTINCT event_id) FROM events") == [(LANDED + len(new),) * 2]
    # exact redeliveries: duplicates of the landed winner
    assert sorted(table(db, "SELECT event_id, content_hash FROM duplicate_deliveries")) == sorted(
        (d["event_id"], content_hash(d)) for d in redelivered)
    # conflicts: each replaced original loses to its winner; each losing copy loses to the original
    want_conflicts = [(w["event_id"], content_hash(w), content_hash(o)) for w, o in
                      zip(winners, originals[REDELIVERED:REDELIVERED + WINNING])]
    want_conflicts += [(c["event_id"], content_hash(o), content_hash(c)) for c, o in
                       zip(losers, originals[REDELIVERED + WINNING:])]
    assert sorted(table(db, "SELECT event_id, winner_hash, loser_hash FROM event_conflicts")) == sorted(want_conflicts)
    # the replaced rows kept their place and took the winner's source
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM event_replacements").fetchone()[0] == WINNING
        assert con.execute("SELECT count(*) FROM events WHERE batch_id = 2").fetchone()[0] == WINNING + len(new)
