"""Kinds of resolution, repeat contact and bot figures on hand-written journeys."""
from __future__ import annotations

from transforms.journeys_test import H, assign, ev, status, ticket
from transforms.metrics_config import MetricsConfig
from transforms.service_metrics import assemble_customer

D = 24 * H
US = 1_000_000


def metrics(events, config=MetricsConfig(), customer="c1"):
    journeys, rows, _ = assemble_customer(customer, events, config=config)
    return [(j, m) for j, m in zip(journeys, rows)]


def test_first_full_and_durable_resolution():
    (j, m), = metrics([ticket("T1", 0), status("T1", H, "solved"), status("T1", 2 * D, "open"),
                       status("T1", 3 * D, "solved"), ev(10 * D + 3 * H, "ticket.message", ticket_id="T1",
                                                         author="customer", channel="email")])
    assert m["first_resolved_at_us"] == H * US and m["first_resolution_s"] == H
    assert j["resolved_at_us"] == 3 * D * US
    assert m["resolution_count"] == 2
    # first spell: 1 h -> 2 d (under 7 d); second: 3 d -> watermark 10 d 3 h = 7 d 3 h: durable
    assert m["durably_resolved"] is True and m["durable_check_at_us"] is None


def test_durable_is_unknown_until_the_customers_events_reach_n_days():
    (_, m), = metrics([ticket("T1", 0), status("T1", H, "solved")])
    assert m["durably_resolved"] is None and m["durable_check_at_us"] == (H + 7 * D) * US
    # exactly 7 days later, any event of the customer (here: another journey) decides it
    (_, m), _ = metrics([ticket("T1", 0), status("T1", H, "solved"), ticket("T2", H + 7 * D)])
    assert m["durably_resolved"] is True


def test_durable_false_when_the_resolution_did_not_hold():
    (_, m), = metrics([ticket("T1", 0), status("T1", H, "solved"), status("T1", H + 6 * D, "open")])
    assert m["durably_resolved"] is False and m["durable_check_at_us"] is None
    # configurable N: with 5 days the same spell was durable
    (_, m), = metrics([ticket("T1", 0), status("T1", H, "solved"), status("T1", H + 6 * D, "open")],
                      MetricsConfig(durable_days=5))
    assert m["durably_resolved"] is True


def test_never_resolved_has_no_resolution_figures():
    (_, m), = metrics([ticket("T1", 0)])
    assert (m["first_resolved_at_us"], m["durably_resolved"], m["resolution_count"]) == (None, None, 0)
    assert m["one_contact_resolution"] is False and m["repeat_contact_within_s"] is None


def test_repeat_contact_in_another_journey_and_channel():
    rows = metrics([ticket("T1", 0), status("T1", H, "solved"),
                    ev(H + 5 * D, "chat.started", chat_id="C1", channel="chat")])
    (j1, m1), (j2, m2) = rows
    assert j1["fcr"] is True and j2["threads"] == ["chat:C1"]  # 5 days: a journey of its own
    assert m1["repeat_contact_within_s"] == 5 * D and m1["repeat_contact_channel"] == "chat"
    assert m1["repeat_contact_thread"] == "chat:C1"
    assert m1["one_contact_resolution"] is False


def test_repeat_contact_outside_the_window_is_none():
    (_, m1), _ = metrics([ticket("T1", 0), status("T1", H, "solved"), ticket("T2", H + 7 * D + 1)])
    assert m1["repeat_contact_within_s"] is None and m1["one_contact_resolution"] is True
    (_, m1), _ = metrics([ticket("T1", 0), status("T1", H, "solved"), ticket("T2", H + 7 * D)])
    assert m1["repeat_contact_within_s"] == 7 * D  # inclusive


def test_a_thread_started_at_the_resolving_instant_is_not_after_it():
    # created sorts before the status change at one instant: T2 started while T1 was open
    (j, m), = metrics([ticket("T1", 0), status("T1", H, "solved"), ticket("T2", H)])
    assert j["threads"] == ["ticket:T1", "ticket:T2"] and m["first_resolved_at_us"] is None


def test_bot_figures():
    (j, m), = metrics([
        ev(0, "chat.started", chat_id="C1", channel="chat"),
        assign("chat:C1", 0, "bot-1", "bots", handler="bot"),
        ev(10, "chat.message", chat_id="C1", author="bot"),
        ev(20, "chat.message", chat_id="C1", author="agent"),   # an agent message before the handoff
        assign("chat:C1", 100, "a1", "support"),
        ev(100, "chat.message", chat_id="C1", author="bot"),
        ev(160, "chat.message", chat_id="C1", author="agent"),
    ])
    assert m["started_with_bot"] and not m["bot_only"]
    assert m["first_bot_response_s"] == 10 and j["first_response_s"] == 20
    assert m["bot_handoff_at_us"] == 100 * US and m["first_human_response_after_bot_s"] == 60


def test_bot_only_journey():
    (j, m), = metrics([ev(0, "chat.started", chat_id="C1", channel="chat"),
                       assign("chat:C1", 0, "bot-1", handler="bot"), ev(5, "chat.message", chat_id="C1", author="bot"),
                       ev(60, "chat.ended", chat_id="C1", outcome="resolved")])
    assert m["bot_only"] and m["started_with_bot"] and j["first_response_s"] is None
    assert m["bot_handoff_at_us"] is None and m["first_human_response_after_bot_s"] is None


def test_business_hours_use_the_teams_calendar():
    from transforms.metrics_config import parse_metrics_config

    config = parse_metrics_config('[calendars.night]\nteams = ["ops"]\nhours.mon = ["00:00-06:00"]\n')
    # Monday 2026-03-02 05:00Z -> 10:00Z with team ops: 1 business hour (05:00-06:00)
    start = 1772427600  # 2026-03-02T05:00:00Z
    (_, m), = metrics([ticket("T1", start), assign("ticket:T1", start, "a1", "ops"),
                       status("T1", start + 5 * H, "solved")], config)
    assert m["calendar"] == "night" and m["time_to_resolution_business_s"] == H
