"""journey_revisions found by DuckDB, inside the landing transaction.

What a revision is, and the rules that make one, are ``transforms.revisions.revisions`` (a pure
function, kept as the rules' reference). The landing used to read the touched customers'
journeys before and after into Python dicts and run that function over them: on a backlog of
50k-event batches that was about a seventh of a ``run --once`` (dict building, per-column
comparisons, JSON encoding of thousands of rows per batch). This module states the same rules
as one ``INSERT ... SELECT`` over the landing's temp tables, so the rows never leave DuckDB.
``revision_sql_test.py`` checks the statement against the pure function on generated journeys.

The statement reads these relations, all set up by the landing:

- ``revision_before``: the touched customers' journeys (not frozen) as landed before this batch,
  with their service metrics and ``_has_metrics`` (``Store._snapshot_before``);
- ``revision_after``: the same journey ids as this batch wrote them (absent: removed);
- ``batch_links``: the landed links of the touched customers before this batch (their events),
  those of settled journeys left out (``Store._read_links``; the statement reads none of them);
- ``staged_links``: the links this batch lands; ``batch_customers``; ``batch_frozen``;
- ``batch_events``: this batch's events (``event_id``, ``customer_id``, ``at_us``).

Where the two differ: the JSON texts. ``before``/``after`` hold the same JSON values (keys sorted,
timestamps in Python's ``isoformat`` with ``+00:00``), but DuckDB writes lists without spaces and
non-ASCII characters unescaped, and prints a double such as 1e-05 as 0.00001. A float column
compared NaN with NaN would also count as unchanged here (no metric is ever NaN: they are
differences of timestamps).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

import duckdb

from pipelines.storage.quoting import ident, sql_literal
from transforms.revisions import IGNORED, MAX_TRIGGER_IDS

TIMESTAMPTZ = "TIMESTAMP WITH TIME ZONE"


@dataclass(frozen=True)
class ValueColumn:
    """A column a revision compares: its name, DuckDB type, and whether it is a service metric
    (compared only when both sides have their service-metrics row)."""

    name: str
    sql_type: str
    is_metric: bool


def value_columns(con: duckdb.DuckDBPyConnection) -> list[ValueColumn]:
    """The compared columns of the database ``con`` uses, read from its tables, in the order
    revisions list them: journeys' then journey_metrics', identity and bookkeeping columns
    (``transforms.revisions.IGNORED``) left out."""
    return [ValueColumn(name, kind, table == "journey_metrics")
            for table in ("journeys", "journey_metrics")
            # (pragma_table_info reads this database's catalog only: duckdb_columns() loads the
            # catalog of every attached database too, the replica's included, 0.025 s at first use)
            for name, kind in con.execute(f"SELECT name, type FROM pragma_table_info({sql_literal(table)}) ORDER BY cid").fetchall()
            if name not in IGNORED]


def json_value(expression: str, sql_type: str) -> str:
    """SQL text of ``expression`` as JSON text. Timestamps as Python's ``isoformat`` of a UTC
    datetime (``2024-01-02T03:04:05.000006+00:00``, microseconds only when not zero), as the
    revisions have always recorded them."""
    if sql_type == TIMESTAMPTZ:
        micros = f"((epoch_us({expression}) % 1000000 + 1000000) % 1000000)"
        return (f"CASE WHEN {expression} IS NULL THEN 'null' ELSE '\"' || "
                f"strftime(timezone('UTC', {expression}), '%Y-%m-%dT%H:%M:%S') || "
                f"CASE WHEN {micros} = 0 THEN '' ELSE '.' || lpad({micros}::VARCHAR, 6, '0') END || '+00:00\"' END")
    return f"coalesce(to_json({expression})::VARCHAR, 'null')"


def _flag(column: ValueColumn) -> str:
    """The column ``compared`` holds per journey: is ``column`` in the revision?"""
    return ident(f"inc_{column.name}")


def _after(column: ValueColumn) -> str:
    """The name ``compared`` gives the column's value as this batch wrote it."""
    return ident(f"_after_{column.name}")


def _json_object(columns: list[ValueColumn], side: Callable[[ValueColumn], str]) -> str:
    """'{"a": 1, "b": 2}' of the columns flagged in the revision (``_flag``), keys sorted;
    ``side`` names the column that holds a column's value on that side.

    ``concat_ws`` skips the NULL entries of the columns not flagged. It replaced a list of the
    entries filtered by a lambda: the same text, and a third less time to plan and run the
    statement (docs/performance.md, "Revisions found in DuckDB")."""
    entries = ", ".join(
        f"CASE WHEN {_flag(c)} THEN {sql_literal(json.dumps(c.name) + ': ')} || "
        f"{json_value(side(c), c.sql_type)} END"
        for c in sorted(columns, key=lambda c: c.name)
    )
    return f"('{{' || concat_ws(', ', {entries}) || '}}')::JSON"


def insert_revisions(columns: list[ValueColumn]) -> str:
    """``INSERT INTO journey_revisions`` of one batch (one parameter: its batch id).

    Per journey of ``revision_before``: unchanged (no row), ``changed`` (the columns whose
    values differ) or ``removed`` (its id was not written again; ``replaced_by`` the journeys
    its events now belong to). Triggers: the batch's events now in the journey (in its
    successors, for a removed one), else the customer's events of the batch, ordered by time
    then id; ``late_events`` those older than the journey's ``last_event_at`` before."""
    flags = ",\n".join(
        f"CASE WHEN n.journey_id IS NULL THEN {'o._has_metrics' if c.is_metric else 'true'} "
        f"ELSE {'o._has_metrics AND n._has_metrics AND ' if c.is_metric else ''}"
        f"o.{ident(c.name)} IS DISTINCT FROM n.{ident(c.name)} END AS {_flag(c)}"
        for c in columns
    )
    names = ", ".join(f"CASE WHEN {_flag(c)} THEN {sql_literal(c.name)} END" for c in columns)
    after_values = ", ".join(f"n.{ident(c.name)} AS {_after(c)}" for c in columns)
    return f"""
INSERT INTO journey_revisions
WITH new_links AS (
    SELECT event_id, journey_id FROM staged_links
    WHERE customer_id IN (SELECT customer_id FROM batch_customers)
      AND journey_id NOT IN (SELECT journey_id FROM batch_frozen)),
successors AS (
    SELECT DISTINCT old.journey_id, l.journey_id AS successor
    FROM batch_links old JOIN new_links l USING (event_id)
    WHERE old.journey_id NOT IN (SELECT journey_id FROM batch_frozen)),
events_now AS (
    SELECT b.event_id, b.customer_id, b.at_us, l.journey_id AS new_journey
    FROM batch_events b LEFT JOIN new_links l USING (event_id)),
-- the triggers are listed only for the journeys and customers a revision can name: the
-- revised journeys, their successors and their customers (most of a large batch's events
-- belong to others, and listing them was most of this statement's time); each list is sorted
-- after it is gathered (structs compare field by field: time, then id), which costs a fifth
-- less than an ordered aggregate's per-group sort and gives the same lists
by_journey AS (
    SELECT new_journey AS journey_id, list_sort(list({{'at': at_us, 'id': event_id}})) AS events
    FROM events_now
    WHERE new_journey IN (SELECT journey_id FROM revision_before UNION ALL SELECT successor FROM successors)
    GROUP BY new_journey),
by_customer AS (
    SELECT customer_id, list_sort(list({{'at': at_us, 'id': event_id}})) AS events
    FROM events_now WHERE customer_id IN (SELECT customer_id FROM revision_before) GROUP BY customer_id),
replaced AS (
    SELECT s.journey_id, list(s.successor ORDER BY s.successor) AS replaced_by,
           flatten(list(j.events ORDER BY s.successor) FILTER (WHERE j.events IS NOT NULL)) AS events
    FROM successors s LEFT JOIN by_journey j ON j.journey_id = s.successor GROUP BY s.journey_id),
-- the flags are columns of their own CTE: named in the same SELECT list, each use of a flag
-- (in both JSON objects) was a copy of its whole expression to bind and to fold again
compared AS (
    SELECT o.*, {after_values}, n.journey_id IS NULL AS is_removed, {flags},
           CASE WHEN n.journey_id IS NULL THEN coalesce(r.replaced_by, []) ELSE [] END AS replaced_by_now,
           CASE WHEN n.journey_id IS NULL THEN
                    CASE WHEN len(r.events) > 0 THEN r.events ELSE coalesce(c.events, []) END
                ELSE coalesce(j.events, c.events, []) END AS triggers
    FROM revision_before o
    LEFT JOIN revision_after n ON n.journey_id = o.journey_id
    LEFT JOIN replaced r ON r.journey_id = o.journey_id
    LEFT JOIN by_journey j ON j.journey_id = o.journey_id
    LEFT JOIN by_customer c ON c.customer_id = o.customer_id),
found AS (
    SELECT journey_id, customer_id, is_removed, replaced_by_now, triggers,
           list_filter([{names}], x -> x IS NOT NULL) AS changed,
           CASE WHEN last_event_at IS NULL THEN 0
                ELSE len(list_filter(triggers, t -> t.at < epoch_us(last_event_at))) END AS late,
           {_json_object(columns, lambda c: ident(c.name))} AS before_json,
           CASE WHEN is_removed THEN '{{}}'::JSON ELSE {_json_object(columns, _after)} END AS after_json
    FROM compared)
SELECT ?, now(), journey_id, customer_id, CASE WHEN is_removed THEN 'removed' ELSE 'changed' END,
       replaced_by_now, CASE WHEN late > 0 THEN 'late_events' ELSE 'new_events' END,
       list_transform(triggers[1:{MAX_TRIGGER_IDS}], t -> t.id), len(triggers), late, changed, before_json, after_json
FROM found WHERE is_removed OR len(changed) > 0
ORDER BY journey_id"""
