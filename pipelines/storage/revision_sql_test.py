"""The revisions statement against the rules' pure reference (transforms.revisions): generated
journeys landed before and after a batch, on the store's own tables and snapshot queries, must
give the same revision rows (JSON compared as values)."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import duckdb
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.storage.models import SCHEMA_SQL
from pipelines.storage.revision_sql import ValueColumn, insert_revisions, json_value, value_columns
from pipelines.storage.store import _AFTER, _SNAPSHOT
from transforms.revisions import revisions

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
BEFORE_BATCH, THIS_BATCH = 1, 2

instants = st.one_of(
    st.integers(min_value=-62_135_596_800_000_000, max_value=253_402_300_799_999_999),  # years 1-9999
    st.integers(min_value=1_700_000_000, max_value=1_700_000_100).map(lambda s: s * 1_000_000),  # whole seconds
).map(lambda us: EPOCH + timedelta(microseconds=us))
texts = st.text(alphabet=st.sampled_from('ab"\\é\n€'), max_size=4)
NON_NULL = {
    "VARCHAR": texts,
    "TIMESTAMP WITH TIME ZONE": instants,
    "DOUBLE": st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.sampled_from([0.0, -0.0, 1e-05])),
    "INTEGER": st.integers(min_value=-3, max_value=3),
    "BOOLEAN": st.booleans(),
    "VARCHAR[]": st.lists(texts, max_size=3),
}


def insert(con: duckdb.DuckDBPyConnection, table: str, row: dict[str, Any]) -> None:
    relation = con.table(table)
    relation.insert([row.get(name) for name in relation.columns])


def value_of(column: ValueColumn) -> st.SearchStrategy[Any]:
    kind = NON_NULL[column.sql_type]
    return kind if column.name in REQUIRED else st.one_of(st.none(), kind)


@st.composite
def journey_values(draw: st.DrawFn, columns: list[ValueColumn]) -> dict[str, Any]:
    return {c.name: draw(value_of(c)) for c in columns}


@st.composite
def batches(draw: st.DrawFn, columns: list[ValueColumn]) -> dict[str, Any]:
    """Journeys landed before (with their events), what this batch wrote for them, and its events."""
    count = draw(st.integers(min_value=1, max_value=5))
    old = []
    for i in range(count):
        values = draw(journey_values(columns))
        fate = draw(st.sampled_from(["same", "changed", "removed"]))
        after = dict(values)
        if fate == "changed":
            changed = draw(st.lists(st.sampled_from(columns), min_size=1, max_size=4))
            after.update({c.name: draw(value_of(c)) for c in changed})
        old.append({"id": f"j{i}", "customer": draw(st.sampled_from(["c0", "c1"])), "values": values, "after": after,
                    "fate": fate, "metrics_before": draw(st.booleans()), "metrics_after": draw(st.booleans()),
                    "events": [f"o{i}.{k}" for k in range(draw(st.integers(min_value=0, max_value=3)))]})
    surviving = [j["id"] for j in old if j["fate"] != "removed"] + ["n0", "n1"]  # n*: journeys new this batch
    new_links = {}
    for j in old:
        for event in j["events"]:
            if draw(st.booleans()):
                new_links[event] = j["id"] if j["fate"] != "removed" and draw(st.booleans()) else draw(st.sampled_from(surviving))
    events = []
    for k in range(draw(st.integers(min_value=0, max_value=6))):
        event_id = f"b{k}"
        events.append((event_id, draw(st.sampled_from(["c0", "c1"])), draw(instants)))
        if draw(st.integers(min_value=0, max_value=3)):  # now and then an event in no journey of the batch
            new_links[event_id] = draw(st.sampled_from(surviving))
    return {"old": old, "new_links": new_links, "events": events}


def land(con: duckdb.DuckDBPyConnection, batch: dict[str, Any], columns: list[ValueColumn]) -> None:
    """The tables and temp tables of a landing at the point where it records revisions."""
    metric_names = {c.name for c in columns if c.is_metric}
    for batch_id, side, has_metrics in ((BEFORE_BATCH, "values", "metrics_before"), (THIS_BATCH, "after", "metrics_after")):
        for j in batch["old"]:
            if batch_id == THIS_BATCH and j["fate"] == "removed":
                continue
            row = {"journey_id": j["id"], "customer_id": j["customer"], "updated_at": EPOCH, "batch_id": batch_id, **j[side]}
            insert(con, "journeys", {k: v for k, v in row.items() if k not in metric_names})
            if j[has_metrics]:
                insert(con, "journey_metrics", {k: v for k, v in row.items() if k in metric_names or k in
                                                ("journey_id", "customer_id", "batch_id")})
        if batch_id == BEFORE_BATCH:
            con.execute("CREATE TEMP TABLE revision_before AS " + _SNAPSHOT.format(journeys="true", metrics="true"))
            con.execute("DELETE FROM journeys")
            con.execute("DELETE FROM journey_metrics")
    new = {k: v for k, v in batch["old"][0]["values"].items() if k not in metric_names}
    insert(con, "journeys", {**new, "journey_id": "n0", "customer_id": "c0", "updated_at": EPOCH,
                             "batch_id": THIS_BATCH})  # landed for the first time: no revision
    con.execute("CREATE TEMP TABLE revision_after AS " + _SNAPSHOT.format(**_AFTER), [THIS_BATCH, THIS_BATCH])
    con.execute("CREATE TEMP TABLE batch_links (event_id VARCHAR, journey_id VARCHAR, customer_id VARCHAR)")
    con.executemany("INSERT INTO batch_links VALUES (?, ?, ?)",
                    [(e, j["id"], j["customer"]) for j in batch["old"] for e in j["events"]] or [("x", "frozen", "c0")])
    con.execute("CREATE TEMP TABLE staged_links (event_id VARCHAR, journey_id VARCHAR, customer_id VARCHAR)")
    for event_id, journey_id in batch["new_links"].items():
        con.execute("INSERT INTO staged_links VALUES (?, ?, 'c0')", [event_id, journey_id])
    con.execute("CREATE TEMP TABLE batch_customers AS SELECT unnest(['c0', 'c1']) AS customer_id")
    con.execute("CREATE TEMP TABLE batch_frozen AS SELECT 'frozen' AS journey_id")
    con.execute("CREATE TEMP TABLE batch_events (event_id VARCHAR, customer_id VARCHAR, at_us BIGINT)")
    for event_id, customer_id, at in batch["events"]:
        con.execute("INSERT INTO batch_events VALUES (?, ?, epoch_us(?::TIMESTAMPTZ))", [event_id, customer_id, at])


def reference(con: duckdb.DuckDBPyConnection, batch: dict[str, Any], columns: list[ValueColumn]) -> list[dict[str, Any]]:
    """What transforms.revisions.revisions gives for the same landing, as the store fed it."""
    metric_names = [c.name for c in columns if c.is_metric]

    def snapshot(table: str) -> list[dict[str, Any]]:
        relation = con.table(table).order("journey_id")
        names = relation.columns
        out = []
        for values in relation.fetchall():
            row = dict(zip(names, values))
            if not row.pop("_has_metrics"):
                for name in metric_names:
                    row.pop(name)
            out.append(row)
        return out

    before = snapshot("revision_before")
    for row in before:
        row["event_ids"] = sorted(e for j in batch["old"] if j["id"] == row["journey_id"] for e in j["events"])
    return revisions(before, snapshot("revision_after"), batch["new_links"], batch["events"])


def comparable(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "before": json.loads(row["before"]), "after": json.loads(row["after"])}


def revision_store() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(SCHEMA_SQL.read_text())
    return con


COLUMNS = value_columns(revision_store())
REQUIRED = {name for (name,) in revision_store().execute(
    "SELECT column_name FROM duckdb_columns() WHERE table_name IN ('journeys', 'journey_metrics') AND NOT is_nullable"
).fetchall()}


@settings(max_examples=150, deadline=None)
@given(batches(COLUMNS))
def test_the_statement_finds_the_revisions_the_rules_define(batch: dict[str, Any]) -> None:
    con = revision_store()
    land(con, batch, COLUMNS)
    expected = [comparable(r) for r in reference(con, batch, COLUMNS)]
    con.execute(insert_revisions(COLUMNS), [THIS_BATCH])
    cursor = con.execute("SELECT * EXCLUDE (batch_id, revised_at) FROM journey_revisions ORDER BY journey_id")
    names = [d[0] for d in cursor.description]
    found = [comparable(dict(zip(names, values))) for values in cursor.fetchall()]
    assert found == expected


def test_timestamps_are_written_as_pythons_isoformat() -> None:
    con = revision_store()
    for instant in (EPOCH + timedelta(microseconds=us) for us in
                    (0, 1, -1, 999_999, 1_700_000_000_000_000, -62_135_596_800_000_000, 253_402_300_799_999_999)):
        (text,) = con.execute(f"SELECT {json_value('t', 'TIMESTAMP WITH TIME ZONE')} FROM (SELECT ?::TIMESTAMPTZ AS t)",
                              [instant]).fetchone()
        assert json.loads(text) == instant.isoformat()
    assert con.execute(f"SELECT {json_value('NULL::TIMESTAMPTZ', 'TIMESTAMP WITH TIME ZONE')}").fetchone() == ("null",)
