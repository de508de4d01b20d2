"""The store's idempotence on a real DuckLake (no Beam): the same batch twice, an older update
after a newer one, and a late record alone all leave the journeys of the union of the events."""
from __future__ import annotations

import json
from pathlib import Path

from pipelines.streaming.lake_store import ALIAS, LakeStore
from transforms.customer_stream import assemble_update
from transforms.dedup import content_hash
from transforms.metrics_config import MetricsConfig
from transforms.parse import SourceRef, parse_record

WINDOW = 72 * 3600.0


def event(offset: int, event_type: str, at: str, **fields: object) -> dict:
    doc = {"event_id": f"e{offset}", "schema_version": 1, "customer_id": "c1", "event_type": event_type,
           "occurred_at": at, **fields}
    kind, row = parse_record(json.dumps(doc).encode(), SourceRef("t.tickets", 0, offset), "tickets", 4_102_444_800_000_000)
    assert kind == "event", row
    row["content_hash"] = content_hash(json.loads(row["payload"]))
    return row


ROWS = [
    event(0, "ticket.created", "2026-03-02T09:00:00Z", ticket_id="T1", channel="email"),
    event(1, "ticket.assigned", "2026-03-02T09:05:00Z", ticket_id="T1", agent_id="a1", team="t1", handler_type="agent"),
    event(2, "ticket.status_changed", "2026-03-02T10:00:00Z", ticket_id="T1", status="solved"),
    event(3, "ticket.status_changed", "2026-03-02T11:00:00Z", ticket_id="T1", status="open"),  # reopened
]


def update(rows: list[dict]) -> dict:
    return assemble_update("c1", rows, [], WINDOW, MetricsConfig())


def tables(store: LakeStore) -> dict[str, list]:
    assert store.con is not None
    out = {}
    for table in ("events", "event_copies", "dead_letters", "journeys", "journey_events", "journey_metrics"):
        columns = [c for (c, *_) in store.con.execute(f"DESCRIBE {ALIAS}.{table}").fetchall() if c not in ("landed_at", "updated_at")]
        out[table] = sorted(map(repr, store.con.execute(f"SELECT {', '.join(chr(34) + c + chr(34) for c in columns)} FROM {ALIAS}.{table}").fetchall()))  # noqa: E501
    return out


def test_replays_and_out_of_order_updates_leave_the_union(tmp_path: Path) -> None:
    dead = {"topic": "t.tickets", "partition": 0, "offset": 9, "kafka_ts_ms": None, "raw": b"{", "reason": "not_json", "detail": "x"}
    with LakeStore(f"sqlite:{tmp_path / 'cat.sqlite'}", str(tmp_path / "data"), WINDOW) as store:
        first = store.land([update(ROWS)], [dead, dead])
        assert (first.events, first.dead_letters, first.repaired, first.journeys) == (4, 1, 0, 1)
        reference = tables(store)
        assert len(reference["dead_letters"]) == 1
        assert store.land([update(ROWS)], [dead]).repaired == 0  # the same batch again
        assert tables(store) == reference
        older = store.land([update(ROWS[:2])], [])  # an older update arriving after the newer one
        assert older.repaired == 1
        assert tables(store) == reference
        late = {"customer_id": "c1", "winners": [ROWS[3]], "copies": [], "journeys": None}  # a late record alone
        assert store.land([late], []).repaired == 1
        assert tables(store) == reference
        assert store.resume_offsets() == {("t.tickets", 0): 4}  # offsets 0-3 landed; 9 is after a gap
        status = store.con.execute(f"SELECT status, reopen_count FROM {ALIAS}.journeys").fetchall()  # type: ignore[union-attr]
        assert status == [("open", 1)]


def test_a_better_copy_replaces_the_stored_winner_and_the_old_one_becomes_a_copy(tmp_path: Path) -> None:
    original = ROWS[1]
    conflicting = dict(original, offset=7, content_hash="0" * 64, agent_id="a2")
    with LakeStore(f"sqlite:{tmp_path / 'cat.sqlite'}", str(tmp_path / "data"), WINDOW) as store:
        store.land([update(ROWS)], [])
        store.land([{"customer_id": "c1", "winners": [conflicting], "copies": [], "journeys": None}], [])
        assert store.con is not None
        assert store.con.execute(f"SELECT agent_id, \"offset\" FROM {ALIAS}.events WHERE event_id = 'e1'").fetchall() == [("a2", 7)]
        assert store.con.execute(f"SELECT \"offset\" FROM {ALIAS}.event_copies").fetchall() == [(1,)]
        assert store.con.execute(f"SELECT agents FROM {ALIAS}.journeys").fetchall() == [(["a2"],)]


def test_the_lake_store_draws_no_progress_bar_on_stdout(tmp_path: Path) -> None:
    """DuckDB draws its progress bar on stdout during statements over 2 s, into pipes and files too."""
    with LakeStore(f"sqlite:{tmp_path / 'cat.sqlite'}", str(tmp_path / "data"), WINDOW) as store:
        assert store.con is not None
        assert store.con.execute("SELECT current_setting('enable_progress_bar')").fetchone() == (False,)
