"""Revision rows: what changed, why, and removed journeys pointing at their successors."""
from __future__ import annotations

import json

from transforms.revisions import revisions


def row(jid, last, **values):
    return {"journey_id": jid, "customer_id": "c1", "last_event_at": last, "updated_at": 99, "batch_id": 1,
            **values}


def test_changed_columns_with_before_and_after_and_late_reason():
    old = [row("j1", 100, status="open", csat=None, event_ids=["e1"])]
    new = [row("j1", 100, status="resolved", csat=None, event_ids=["e1", "e2"])]
    (r,) = revisions(old, new, {"e1": "j1", "e2": "j1"}, [("e2", "c1", 50)])
    assert r["change"] == "changed" and r["changed_columns"] == ["status"]
    assert json.loads(r["before"]) == {"status": "open"} and json.loads(r["after"]) == {"status": "resolved"}
    assert (r["reason"], r["late_events"], r["trigger_event_ids"]) == ("late_events", 1, ["e2"])


def test_in_order_events_are_new_events_and_unchanged_rows_are_no_revision():
    old = [row("j1", 100, status="open", event_ids=["e1"]), row("j2", 10, status="resolved", event_ids=["e0"])]
    new = [row("j1", 200, status="open", event_ids=["e1", "e3"]), row("j2", 10, status="resolved", event_ids=["e0"])]
    (r,) = revisions(old, new, {"e1": "j1", "e3": "j1", "e0": "j2"}, [("e3", "c1", 200)])
    assert (r["journey_id"], r["reason"], r["changed_columns"]) == ("j1", "new_events", ["last_event_at"])


def test_a_removed_journey_names_its_successor_and_first_landings_are_not_revisions():
    old = [row("j1", 100, status="open", event_ids=["e1", "e2"])]
    new = [row("j0", 100, status="open", event_ids=["e0", "e1", "e2"])]
    (r,) = revisions(old, new, {"e0": "j0", "e1": "j0", "e2": "j0"}, [("e0", "c1", 5)])
    assert (r["change"], r["replaced_by"], r["trigger_event_ids"], r["late_events"]) == ("removed", ["j0"], ["e0"], 1)
    assert json.loads(r["after"]) == {} and "status" in json.loads(r["before"])
    assert revisions([], new, {}, [("e0", "c1", 5)]) == []


def test_a_change_caused_by_another_journey_of_the_customer_names_the_customers_events():
    old = [row("j1", 100, one_contact_resolution=True, event_ids=["e1"])]
    new = [row("j1", 100, one_contact_resolution=False, event_ids=["e1"]), row("j2", 300, event_ids=["e9"])]
    (r,) = revisions(old, new, {"e1": "j1", "e9": "j2"}, [("e9", "c1", 300)])
    assert r["trigger_event_ids"] == ["e9"] and r["reason"] == "new_events"


def test_columns_the_old_row_did_not_have_are_no_revision():
    # a journey landed before the service metrics existed: its first recompute adds them
    old = [row("j1", 100, status="open", event_ids=["e1"])]
    new = [row("j1", 100, status="open", durably_resolved=None, resolution_count=0, event_ids=["e1"])]
    assert revisions(old, new, {"e1": "j1"}, [("e2", "c1", 200)]) == []
