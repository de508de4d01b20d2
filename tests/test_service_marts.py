"""The service-metric marts (mart_handoff_kinds, mart_service_quality) on four golden scenarios
landed by the real pipeline, with every value worked out by hand:

  63 bot -> support queue -> a1 (web chat, 2026-03-02): 1 bot_to_human handoff bots -> support
  67 bot chat -> a1@chat-team, escalated into a tier2 ticket (web, 03-02): bot_to_human bots -> chat-team,
     team_to_team chat-team -> tier2 (an escalation, after the first agent reply)
  75 email ticket solved 03-02 10:00, survey 03-09 10:00 (durable true in the table)
  81 email ticket solved 03-02 10:00 (journey 1), web chat 03-06 10:00-10:20 (journey 2): a repeat contact

The newest landed event is 75's survey, 03-09 10:00. That event-time watermark decides the
pending durability of 63 (check 03-09 09:10 -> durable now) and of 81's first journey (check
03-09 10:00, inclusive -> durable now), but not of 67 (check 03-09 11:00) or 81's chat (03-13).
"""
from __future__ import annotations

import json
from datetime import date

import pytest

from tests.support import run_once, send_events, table
from tests.test_service_metrics_golden import CONFIG, SERVICE


@pytest.fixture(scope="module")
def landed_db(broker, tmp_path_factory):
    from tests.support import new_topics

    topics = new_topics(broker)
    db = tmp_path_factory.mktemp("marts") / "service.duckdb"
    docs = []
    for s in SERVICE:
        if s.name[:2] in ("63", "67", "75", "81"):
            for line in s.lines:
                doc = json.loads(line)
                doc["customer_id"] = f"{s.name[:2]}/{doc['customer_id']}"
                doc["event_id"] = f"{s.name[:2]}/{doc['event_id']}"
                docs.append(doc)
    send_events(broker, topics, docs)
    run_once(db, broker, topics, service_metrics=CONFIG)
    return db


def test_mart_handoff_kinds(landed_db):
    rows = table(landed_db, """SELECT day, kind, from_team, to_team, handoffs, journeys, escalations, post_reply,
                                      round(share_of_day, 6) FROM mart_handoff_kinds ORDER BY kind, to_team""")
    d = date(2026, 3, 2)
    third = round(1 / 3, 6)
    assert rows == [
        (d, "bot_to_human", "bots", "chat-team", 1, 1, 0, 0, third),
        (d, "bot_to_human", "bots", "support", 1, 1, 0, 0, third),
        (d, "team_to_team", "chat-team", "tier2", 1, 1, 1, 1, third),
    ]


def test_mart_service_quality(landed_db):
    columns = ("day, channel, journeys, resolved_once, round(median_first_resolution_h, 6), "
               "round(median_full_resolution_h, 6), round(median_ttr_business_h, 6), "
               "round(median_first_response_business_min, 6), durable_decided, durable_rate, durable_pending, "
               "repeat_contacts, repeat_contact_rate, one_contact_resolution_rate, bot_started, bot_only, "
               "median_human_after_bot_min, post_reply_reassignment_rate, agent_pingpong_journeys")
    rows = table(landed_db, f"SELECT {columns} FROM mart_service_quality ORDER BY day, channel")
    h = round(3900 / 3600, 6)  # median of 600 s (63) and 7200 s (67)
    assert rows == [
        # 81 journey 1 and 75: both first resolved after 1 h, replies after 30 min; both durable now;
        # 81 has a repeat contact -> one-contact resolution 1 of 2
        (date(2026, 3, 2), "email", 2, 2, 1.0, 1.0, 1.0, 30.0, 2, 1.0, 0, 1, 0.5, 0.5, 0, 0, None, 0.0, 0),
        # 63 and 67: 63 durable now, 67 pending; 67 is not a one-contact resolution (two contacts);
        # human after bot 180 s and 60 s -> median 2 min; 67 was reassigned after the first reply
        (date(2026, 3, 2), "web", 2, 2, h, h, h, 4.0, 1, 1.0, 1, 0, 0.0, 0.5, 2, 0, 2.0, 0.5, 0),
        # 81 journey 2: 20 min, reply after 2 min, pending (check 03-13)
        (date(2026, 3, 6), "web", 1, 1, round(1200 / 3600, 6), round(1200 / 3600, 6), round(1200 / 3600, 6),
         2.0, 0, None, 1, 0, 0.0, 1.0, 0, 0, None, 0.0, 0),
    ]


def test_durably_resolved_now_uses_the_event_time_watermark(landed_db):
    rows = table(landed_db, """SELECT split_part(customer_id, '/', 1), threads[1], durably_resolved, durably_resolved_now
                               FROM core_service_metrics ORDER BY 1, 2""")
    assert rows == [
        ("63", "chat:C1", None, True),
        ("67", "chat:C1", None, None),
        ("75", "ticket:T1", True, True),
        ("81", "chat:C1", None, None),
        ("81", "ticket:T1", None, True),
    ]
