"""The simulator: deterministic, contract-valid, with the scenario mix and the mess asked for."""
from __future__ import annotations

import json
from collections import Counter
from datetime import datetime, timezone

from pipelines.simulate import MALFORMED_KINDS, generate_customer_events, to_messages
from transforms.parse import SourceRef, parse_record

START = datetime(2026, 8, 1, tzinfo=timezone.utc)
NOW_US = int(datetime(2027, 1, 1, tzinfo=timezone.utc).timestamp() * 1_000_000)
STREAM = {"ticket": "tickets", "chat": "chats", "survey": "surveys"}


def test_same_seed_same_bytes_other_seed_other_events():
    a = to_messages(generate_customer_events(50, 7, START), 7, 0.1, 0.1, 0.1)
    b = to_messages(generate_customer_events(50, 7, START), 7, 0.1, 0.1, 0.1)
    c = to_messages(generate_customer_events(50, 8, START), 8, 0.1, 0.1, 0.1)
    assert a == b
    assert a != c


def test_clean_events_are_valid_contract_events_with_unique_ids():
    events = generate_customer_events(200, 1, START)
    ids = [e["event_id"] for e in events]
    assert len(ids) == len(set(ids))
    for e in events:
        kind, row = parse_record(json.dumps(e).encode(), SourceRef("t", 0, 0), STREAM[e["event_type"].split(".")[0]], NOW_US)
        assert kind == "event", (row, e)


def test_scenario_mix_covers_the_journeys_support_desks_see():
    events = generate_customer_events(200, 2, START)
    types = Counter(e["event_type"] for e in events)
    assert all(types[t] for t in ("ticket.created", "chat.started", "survey.responded", "chat.ended"))
    outcomes = Counter(e["outcome"] for e in events if e["event_type"] == "chat.ended")
    assert outcomes["escalated"] and outcomes["abandoned"] and outcomes["resolved"]
    assert any(e.get("ticket_id") for e in events if e["event_type"] == "chat.ended")
    statuses = [(e["ticket_id"], e["status"]) for e in events if e["event_type"] == "ticket.status_changed"]
    reopened = {t for t, s in statuses if s == "open"}
    assert reopened, "no reopen"
    assignments: dict[str, list] = {}
    for e in events:
        if e["event_type"].endswith(".assigned"):
            assignments.setdefault(e.get("ticket_id") or e.get("chat_id"), []).append(e)
    chains = [[a.get("agent_id") for a in chain] for chain in assignments.values()]
    assert any(len(c) >= 3 and c[0] == c[2] and c[0] != c[1] and c[0] for c in chains), "no A -> B -> A"
    assert any(c[0] is None for c in chains), "no team-only assignment"
    assert any(chain[0]["handler_type"] == "bot" and any(a["handler_type"] == "agent" for a in chain)
               for chain in assignments.values()), "no bot -> agent"
    offsets = Counter(e["occurred_at"][-6:] for e in events if not e["occurred_at"].endswith("Z"))
    assert offsets, "every timestamp in UTC: offsets are never exercised"


def test_mess_fractions():
    events = generate_customer_events(300, 3, START)
    clean = to_messages(events, 3)
    messy = to_messages(events, 3, out_of_order=0.05, duplicates=0.02, malformed=0.01)
    assert len(clean) == len(events)
    values = Counter(v for _, _, v in messy)
    assert sum(n - 1 for n in values.values() if n > 1) == int(len(events) * 0.02)
    assert len(messy) == len(events) + int(len(events) * 0.02) + int(len(events) * 0.01)
    malformed = [
        v for s, _, v in messy
        if parse_record(v, SourceRef("t", 0, 0), s, NOW_US)[0] == "dead"
    ]
    assert len(malformed) == int(len(events) * 0.01) >= len(MALFORMED_KINDS)
    clean_order = [v for _, _, v in clean]
    messy_clean = [v for _, _, v in messy if v in set(clean_order)]
    deduped = list(dict.fromkeys(messy_clean))
    assert deduped != clean_order  # some arrived late
    assert sorted(deduped) == sorted(clean_order)
