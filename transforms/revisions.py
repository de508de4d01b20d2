"""Revisions: how a batch changed journeys that were already landed, and why.

Every batch recomputes the journeys of the customers it touches, so late and out-of-order
events restate history in place. Instead of restating silently, the store compares each touched
customer's rows before and after (inside the landing transaction) and records, per journey
whose values changed, the batch, the events that caused it, and the before/after values of the
changed columns. Pure: rows in, rows out. This is the rules' reference: the store runs the same
rules as one SQL statement inside DuckDB (pipelines/storage/revision_sql.py), so the rows never
leave the database, and revision_sql_test.py holds that statement to this function.
"""
from __future__ import annotations

import json
from datetime import date, datetime
from typing import Any, Iterable, Optional

# Not values of the journey: identity and bookkeeping columns.
IGNORED = frozenset({"journey_id", "customer_id", "updated_at", "batch_id", "event_ids"})
MAX_TRIGGER_IDS = 20


def _plain(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def changed_columns(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """Value columns present on both sides whose values differ (a column the old row did not
    have — e.g. service metrics of a journey landed before they existed — is no revision)."""
    return [n for n in before if n not in IGNORED and n in after and before[n] != after[n]
            and _plain(before[n]) != _plain(after[n])]


def revisions(
    old_rows: Iterable[dict[str, Any]],
    new_rows: Iterable[dict[str, Any]],
    new_links: dict[str, str],
    batch_events: Iterable[tuple[str, str, Any]],
) -> list[dict[str, Any]]:
    """Revision rows for one batch.

    ``old_rows``/``new_rows``: the touched customers' journey rows (all value columns) before and
    after; ``new_links``: event_id -> journey_id after; ``batch_events``: (event_id, customer_id,
    occurred_at) of the events this batch landed. A journey landed for the first time is not a
    revision; one whose id disappeared is ``removed``, with the journeys its events joined."""
    new_by_id = {r["journey_id"]: r for r in new_rows}
    by_customer: dict[str, list[tuple[str, Any]]] = {}
    by_journey: dict[str, list[tuple[str, Any]]] = {}
    for event_id, customer_id, at in sorted(batch_events, key=lambda e: (e[2], e[0])):
        by_customer.setdefault(customer_id, []).append((event_id, at))
        journey = new_links.get(event_id)
        if journey is not None:
            by_journey.setdefault(journey, []).append((event_id, at))
    out = []
    for old in old_rows:
        journey_id = old["journey_id"]
        new = new_by_id.get(journey_id)
        if new is not None:
            columns = changed_columns(old, new)
            if not columns:
                continue
            change, replaced_by = "changed", []
            triggers = by_journey.get(journey_id) or by_customer.get(old["customer_id"], [])
            after = {c: _plain(new.get(c)) for c in columns}
        else:
            change = "removed"
            old_events = set(old.get("event_ids") or [])
            replaced_by = sorted({new_links[e] for e in old_events if e in new_links})
            columns = [c for c in old if c not in IGNORED]
            triggers = [t for j in replaced_by for t in by_journey.get(j, [])] or by_customer.get(old["customer_id"], [])
            after = {}
        last_before: Optional[Any] = old.get("last_event_at")
        late = sum(1 for _, at in triggers if last_before is not None and at < last_before)
        out.append({
            "journey_id": journey_id,
            "customer_id": old["customer_id"],
            "change": change,
            "replaced_by": replaced_by,
            "reason": "late_events" if late else "new_events",
            "trigger_event_ids": [e for e, _ in triggers[:MAX_TRIGGER_IDS]],
            "trigger_events": len(triggers),
            "late_events": late,
            "changed_columns": columns,
            "before": json.dumps({c: _plain(old.get(c)) for c in columns}, sort_keys=True),
            "after": json.dumps(after, sort_keys=True),
        })
    return out
