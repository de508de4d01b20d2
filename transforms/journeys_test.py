"""Hand-written cases for each journey rule and metric of docs/metrics.md (pure, no Kafka, no Beam)."""
from __future__ import annotations

import itertools
import random

import pytest

from transforms.events import Event
from transforms.journeys import assemble_journeys, build_thread, journey_id_for

H = 3600
US = 1_000_000
_ids = itertools.count()


def ev(t: float, event_type: str, customer: str = "c1", event_id: str | None = None, **fields) -> Event:
    return Event(
        event_id=event_id or f"e{next(_ids):05d}",
        event_type=event_type,
        at_us=int(t * US),
        customer_id=customer,
        **fields,
    )


def ticket(tid: str, t: float, channel: str = "email", **kw) -> Event:
    return ev(t, "ticket.created", ticket_id=tid, channel=channel, **kw)


def status(tid: str, t: float, value: str) -> Event:
    return ev(t, "ticket.status_changed", ticket_id=tid, status=value)


def assign(thread: str, t: float, agent: str | None = None, team: str | None = None, handler: str = "agent") -> Event:
    kind, tid = thread.split(":")
    key = {"ticket_id": tid} if kind == "ticket" else {"chat_id": tid}
    return ev(t, f"{kind}.assigned", handler_type=handler, agent_id=agent, team=team, **key)


def tmsg(tid: str, t: float, author: str, channel: str = "email") -> Event:
    return ev(t, "ticket.message", ticket_id=tid, author=author, channel=channel)


def chat(cid: str, t: float, channel: str = "chat") -> Event:
    return ev(t, "chat.started", chat_id=cid, channel=channel)


def cmsg(cid: str, t: float, author: str) -> Event:
    return ev(t, "chat.message", chat_id=cid, author=author)


def ended(cid: str, t: float, outcome: str, ticket_id: str | None = None) -> Event:
    return ev(t, "chat.ended", chat_id=cid, outcome=outcome, ticket_id=ticket_id)


def survey(t: float, ticket_id: str | None = None, chat_id: str | None = None, csat=None, nps=None) -> Event:
    return ev(t, "survey.responded", survey_id=f"s{next(_ids)}", ticket_id=ticket_id, chat_id=chat_id, csat=csat, nps=nps)


def one(events: list[Event], **kw) -> dict:
    rows = assemble_journeys("c1", events, **kw)
    assert len(rows) == 1, rows
    return rows[0]


# ---------------------------------------------------------------- journey rules


def test_simple_ticket_resolved_metrics():
    j = one([ticket("T", 0), assign("ticket:T", 60, "a1", "billing"), tmsg("T", 120, "agent"), status("T", 3600, "solved")])
    assert j["status"] == "resolved"
    assert j["started_at_us"] == 0
    assert j["resolved_at_us"] == 3600 * US
    assert j["time_to_resolution_s"] == 3600.0
    assert j["first_response_s"] == 120.0
    assert j["contact_count"] == 1 and j["reopen_count"] == 0
    assert j["fcr"] is True
    assert j["agents"] == ["a1"] and j["teams"] == ["billing"]


def test_open_journey_has_no_resolution():
    j = one([ticket("T", 0), tmsg("T", 10, "customer")])
    assert j["status"] == "open"
    assert j["resolved_at_us"] is None and j["time_to_resolution_s"] is None
    assert j["first_response_s"] is None
    assert j["fcr"] is False


def test_chat_unresolved_outcome_gives_unresolved_journey():
    j = one([chat("C", 0), ended("C", 300, "abandoned")])
    assert j["status"] == "unresolved"
    assert j["resolved_at_us"] is None


def test_chat_resolved_outcome():
    j = one([chat("C", 0), ended("C", 300, "resolved")])
    assert j["status"] == "resolved" and j["time_to_resolution_s"] == 300


def test_escalation_links_chat_and_ticket_created_after_chat_ended():
    j = one([chat("C", 0), ended("C", 100, "escalated", ticket_id="T"), ticket("T", 200), status("T", 500, "solved")])
    assert j["contact_count"] == 2
    assert j["status"] == "resolved" and j["time_to_resolution_s"] == 500


def test_escalation_link_joins_even_outside_repeat_window():
    events = [chat("C", 0), ended("C", 100, "escalated", ticket_id="T"), ticket("T", 100 + 10 * H)]
    j = one(events, repeat_window_s=H)
    assert j["contact_count"] == 2


def test_escalation_ticket_created_before_chat_ended():
    j = one([chat("C", 0), ticket("T", 50), ended("C", 100, "escalated", ticket_id="T")])
    assert j["contact_count"] == 2 and j["status"] == "open"


def test_new_thread_while_journey_open_joins():
    j = one([ticket("T1", 0), ticket("T2", 10 * 24 * H, channel="phone")])
    assert j["contact_count"] == 2


@pytest.mark.parametrize(
    "gap, joins",
    [(72 * H - 1, True), (72 * H, True), (72 * H + 1, False)],
    ids=["just-inside", "exactly-72h", "just-outside"],
)
def test_repeat_window_is_inclusive(gap, joins):
    rows = assemble_journeys("c1", [ticket("T1", 0), status("T1", 100, "solved"), ticket("T2", 100 + gap)])
    assert (len(rows) == 1) is joins


def test_repeat_window_is_configurable():
    events = [ticket("T1", 0), status("T1", 100, "solved"), ticket("T2", 100 + 2 * H)]
    assert len(assemble_journeys("c1", events, repeat_window_s=H)) == 2
    assert len(assemble_journeys("c1", events, repeat_window_s=3 * H)) == 1


def test_thread_without_start_event_starts_at_earliest_event():
    j = one([tmsg("T", 50, "customer"), assign("ticket:T", 60, "a1"), status("T", 100, "solved")])
    assert j["started_at_us"] == 50 * US
    assert j["time_to_resolution_s"] == 50


def test_survey_of_unknown_thread_waits():
    rows = assemble_journeys("c1", [survey(10, ticket_id="T", csat=5)])
    assert rows == []
    j = one([survey(10 * H, ticket_id="T", csat=5), ticket("T", 0), status("T", 100, "solved")])
    assert j["csat"] == 5


def test_status_follows_last_ended_thread():
    # chat resolved at 100, ticket (same journey) abandoned later -> unresolved
    j = one([chat("C", 0), ended("C", 100, "resolved"), chat("C2", 200), ended("C2", 300, "abandoned")])
    assert j["status"] == "unresolved"
    j = one([chat("C", 0), chat("C2", 10), ended("C2", 50, "abandoned"), ended("C", 100, "resolved")])
    assert j["status"] == "resolved" and j["resolved_at_us"] == 100 * US


def test_customers_are_separate():
    events = [ticket("T", 0), ev(1, "ticket.created", customer="c2", ticket_id="X", channel="web")]
    assert len(assemble_journeys("c1", events)) == 1


def test_several_journeys_of_one_customer():
    events = [ticket("T1", 0), status("T1", 10, "solved"), ticket("T2", 10 + 100 * H), status("T2", 20 + 100 * H, "solved")]
    rows = assemble_journeys("c1", events)
    assert len(rows) == 2
    assert {r["journey_id"] for r in rows} == {journey_id_for("c1", ("ticket", "T1")), journey_id_for("c1", ("ticket", "T2"))}


# ---------------------------------------------------------------- resolution and reopen


def test_reopen_counts_and_resolution_time_includes_cycle():
    j = one([ticket("T", 0), status("T", 100, "solved"), status("T", 200, "open"), status("T", 400, "solved")])
    assert j["reopen_count"] == 1
    assert j["resolved_at_us"] == 400 * US and j["time_to_resolution_s"] == 400
    assert j["fcr"] is False


def test_solved_then_closed_keeps_first_resolution_time():
    j = one([ticket("T", 0), status("T", 100, "solved"), status("T", 900, "closed")])
    assert j["resolved_at_us"] == 100 * US and j["reopen_count"] == 0


def test_reopened_and_still_open():
    j = one([ticket("T", 0), status("T", 100, "solved"), status("T", 200, "pending")])
    assert j["status"] == "open" and j["resolved_at_us"] is None and j["reopen_count"] == 1


# ---------------------------------------------------------------- first response


def test_first_response_ignores_bot_and_system_messages():
    j = one([chat("C", 0), cmsg("C", 5, "bot"), cmsg("C", 6, "system"), cmsg("C", 7, "customer"), cmsg("C", 90, "agent")])
    assert j["first_response_s"] == 90


# ---------------------------------------------------------------- handoffs


def handoffs(*assignments: Event) -> tuple[int, int]:
    j = one([ticket("T", 0), *assignments])
    return j["handoff_count"], j["team_handoff_count"]


def test_first_assignment_is_not_a_handoff():
    assert handoffs(assign("ticket:T", 1, "a1", "t1")) == (0, 0)


def test_agent_change_is_a_handoff():
    assert handoffs(assign("ticket:T", 1, "a1", "t1"), assign("ticket:T", 2, "a2", "t1")) == (1, 0)


def test_team_change_counts_once_and_as_team_handoff():
    assert handoffs(assign("ticket:T", 1, "a1", "t1"), assign("ticket:T", 2, "a2", "t2")) == (1, 1)


def test_taking_from_team_queue_is_not_a_handoff():
    assert handoffs(assign("ticket:T", 1, team="t1"), assign("ticket:T", 2, "a1", "t1")) == (0, 0)


def test_agent_back_to_queue_then_other_agent_is_one():
    assert handoffs(
        assign("ticket:T", 1, "a1", "t1"), assign("ticket:T", 2, team="t1"), assign("ticket:T", 3, "a2", "t1")
    ) == (1, 0)


def test_team_only_assignment_to_other_team_forgets_agent():
    # a1@t1 -> queue t2 (team handoff) -> a2@t2: the agent was forgotten, so no second handoff
    assert handoffs(
        assign("ticket:T", 1, "a1", "t1"), assign("ticket:T", 2, team="t2"), assign("ticket:T", 3, "a2", "t2")
    ) == (1, 1)


def test_bot_to_human_is_a_handoff():
    j = one([chat("C", 0), assign("chat:C", 1, "bot-1", handler="bot"), assign("chat:C", 5, "a1", "t1")])
    assert j["handoff_count"] == 1


def test_a_b_a_counts_two():
    assert handoffs(assign("ticket:T", 1, "a"), assign("ticket:T", 2, "b"), assign("ticket:T", 3, "a")) == (2, 0)


def test_same_handler_again_is_not_a_handoff():
    assert handoffs(assign("ticket:T", 1, "a", "t"), assign("ticket:T", 2, "a", "t")) == (0, 0)


def test_unknown_side_is_not_a_change():
    assert handoffs(assign("ticket:T", 1, "a"), assign("ticket:T", 2, team="t9")) == (0, 0)


def test_escalation_handoff_when_ticket_handler_differs():
    events = [
        chat("C", 0), assign("chat:C", 1, "a1", "chat-team"), ended("C", 10, "escalated", ticket_id="T"),
        ticket("T", 20), assign("ticket:T", 30, "a2", "tier2"),
    ]
    j = one(events)
    assert (j["handoff_count"], j["team_handoff_count"]) == (1, 1)


def test_escalation_same_handler_is_not_a_handoff():
    events = [
        chat("C", 0), assign("chat:C", 1, "a1", "t"), ended("C", 10, "escalated", ticket_id="T"),
        ticket("T", 20), assign("ticket:T", 30, "a1", "t"),
    ]
    assert one(events)["handoff_count"] == 0


# ---------------------------------------------------------------- channels


def test_channel_hops_count_changes_between_touchpoints():
    events = [
        chat("C", 0, channel="chat"), cmsg("C", 1, "customer"), ended("C", 5, "abandoned"),
        ticket("T", 60, channel="email"), tmsg("T", 70, "customer", channel="email"),
        tmsg("T", 80, "customer", channel="phone"), tmsg("T", 90, "agent", channel="web"),
    ]
    j = one(events)
    # touchpoints: chat, chat, email, email, phone (agent messages are not touchpoints)
    assert j["touchpoint_count"] == 5
    assert j["channel_hops"] == 2
    assert j["channels"] == ["chat", "email", "phone"]


def test_surveys_are_not_touchpoints_and_latest_score_wins():
    events = [
        ticket("T", 0, channel="web"), status("T", 10, "solved"),
        survey(20, ticket_id="T", csat=2, nps=3), survey(30, ticket_id="T", csat=None, nps=9), survey(40, ticket_id="T", csat=5),
    ]
    j = one(events)
    assert j["touchpoint_count"] == 1 and j["channel_hops"] == 0
    assert (j["csat"], j["nps"]) == (5, 9)


# ---------------------------------------------------------------- ordering and duplicates


def test_equal_timestamps_follow_type_order():
    # solved and a message at the same instant: message first, then the status change
    j = one([ticket("T", 0), status("T", 10, "solved"), tmsg("T", 10, "agent")])
    assert j["first_response_s"] == 10 and j["status"] == "resolved"


def test_same_instant_with_different_offsets_is_equal():
    from transforms.parse import parse_timestamp_us

    assert parse_timestamp_us("2026-03-01T12:00:00+02:00") == parse_timestamp_us("2026-03-01T10:00:00Z")
    assert parse_timestamp_us("2026-03-01T05:00:00.5-05:00") == parse_timestamp_us("2026-03-01T10:00:00.500000Z")


def test_results_do_not_depend_on_arrival_order_or_duplicates():
    events = [
        chat("C", 0), assign("chat:C", 1, "bot-1", handler="bot"), assign("chat:C", 2, "a1", "t1"),
        cmsg("C", 3, "customer"), ended("C", 10, "escalated", ticket_id="T"), ticket("T", 11, channel="email"),
        assign("ticket:T", 12, "a2", "t2"), status("T", 50, "solved"), status("T", 60, "open"),
        status("T", 70, "solved"), survey(80, ticket_id="T", csat=4), ticket("T2", 90 + 100 * H),
    ]
    expected = assemble_journeys("c1", events)
    rng = random.Random(7)
    for _ in range(20):
        shuffled = events + rng.sample(events, 3)
        rng.shuffle(shuffled)
        assert assemble_journeys("c1", shuffled) == expected


# ---------------------------------------------------------------- decisions the rules leave open (docs/metrics.md)


def test_repeated_chat_ended_keeps_first_end_and_outcome():
    j = one([chat("C", 0), ended("C", 100, "resolved"), ended("C", 200, "abandoned")])
    assert j["status"] == "resolved" and j["resolved_at_us"] == 100 * US


def test_repeated_chat_ended_still_links_its_ticket():
    j = one([chat("C", 0), ended("C", 100, "abandoned"), ended("C", 200, "escalated", ticket_id="T"), ticket("T", 300 + 100 * H)])
    assert j["contact_count"] == 2 and j["status"] == "open"


def test_second_created_event_of_a_thread_is_no_touchpoint():
    j = one([ticket("T", 0, channel="email"), ticket("T", 5, channel="web"), status("T", 10, "solved")])
    assert j["touchpoint_count"] == 1 and j["channels"] == ["email"] and j["channel_hops"] == 0
    assert j["event_count"] == 3


def test_first_delivery_of_a_conflicting_duplicate_wins():
    first = ev(100, "ticket.status_changed", event_id="dup", ticket_id="T", status="solved")
    later = ev(50, "ticket.status_changed", event_id="dup", ticket_id="T", status="pending")
    assert one([ticket("T", 0), first, later])["status"] == "resolved"
    assert one([ticket("T", 0), later, first])["status"] == "open"


def test_end_reopen_end_at_one_instant_is_ended_by_event_order():
    # solved, open, solved all at t=100 (event_id order): the ticket is ended after 100, so a
    # thread starting more than the window later starts a new journey
    events = [
        ticket("T1", 0),
        ev(100, "ticket.status_changed", event_id="s1", ticket_id="T1", status="solved"),
        ev(100, "ticket.status_changed", event_id="s2", ticket_id="T1", status="open"),
        ev(100, "ticket.status_changed", event_id="s3", ticket_id="T1", status="solved"),
        ticket("T2", 100 + 73 * H),
    ]
    rows = assemble_journeys("c1", events)
    assert len(rows) == 2
    assert rows[0]["reopen_count"] == 1 and rows[0]["status"] == "resolved"


def test_thread_starting_at_the_instant_another_ends_joins_with_zero_window():
    # created sorts before status changes at the same instant: T1 is still open when T2 starts
    rows = assemble_journeys("c1", [ticket("T1", 0), status("T1", 100, "solved"), ticket("T2", 100)], repeat_window_s=0)
    assert len(rows) == 1
    rows = assemble_journeys("c1", [ticket("T1", 0), status("T1", 100, "solved"), ticket("T2", 101)], repeat_window_s=0)
    assert len(rows) == 2


# docs/metrics.md "Order of events": at the same instant, by type in this order, then by event_id.
DOCUMENTED_TYPE_ORDER = [
    ("ticket.created", "chat.started"),
    ("ticket.assigned", "chat.assigned"),
    ("ticket.message", "chat.message"),
    ("ticket.status_changed",),
    ("chat.ended",),
    ("survey.responded",),
]


def test_event_order_at_one_instant_is_the_documented_type_order():
    """All nine types at one instant, event ids running against the documented order (tickets
    and chats mixed): only the type ranks can put them in order; within a rank the id decides."""
    types = [t for group in DOCUMENTED_TYPE_ORDER for t in group]
    events = [ev(0, t, event_id=f"id-{20 - i:02d}") for i, t in enumerate(types)]
    ordered = sorted(reversed(events), key=lambda e: e.sort_key)
    rank = {t: i for i, group in enumerate(DOCUMENTED_TYPE_ORDER) for t in group}
    assert [rank[e.event_type] for e in ordered] == sorted(rank[t] for t in types)
    for group in DOCUMENTED_TYPE_ORDER:  # same rank: by event_id
        ids = [e.event_id for e in ordered if e.event_type in group]
        assert ids == sorted(ids)


def test_created_sorts_before_an_assignment_at_the_same_instant():
    """Through the journey: an assignment at the ticket's creation instant, with a smaller
    event_id, is still after the creation: the thread starts with its created event, so the
    journey's first touchpoint carries the ticket's channel and the assignment is the first one."""
    j = one([ev(0, "ticket.assigned", event_id="a", ticket_id="T", handler_type="agent", agent_id="a1", team="t1"),
             ev(0, "ticket.created", event_id="b", ticket_id="T", channel="phone"),
             ev(0, "ticket.assigned", event_id="c", ticket_id="T", handler_type="agent", agent_id="a2", team="t1")])
    assert j["agents"] == ["a1", "a2"] and j["handoff_count"] == 1
    assert j["channels"] == ["phone"] and j["touchpoint_count"] == 1


def test_a_repeated_escalation_to_the_same_ticket_is_one_escalation_handoff():
    """docs/metrics.md: a chat ends once (a repeated chat.ended changes nothing, its ticket_id
    still links), and each chat linked to a ticket adds at most one escalation handoff."""
    j = one([chat("C", 0), assign("chat:C", 1, "a1", "chat-team"), ended("C", 10, "escalated", ticket_id="T"),
             ended("C", 20, "escalated", ticket_id="T"), ticket("T", 30), assign("ticket:T", 31, "a2", "tier2"),
             status("T", 40, "solved")])
    assert j["threads"] == ["chat:C", "ticket:T"]
    assert (j["handoff_count"], j["team_handoff_count"]) == (1, 1)


def test_a_thread_whose_first_event_ends_it_starts_then_ends():
    """A ticket whose earliest known event is its solving status change (its created event is
    missing or later) starts and ends at that instant: resolved there, not left open."""
    j = one([status("T", 100, "solved")])
    assert (j["status"], j["started_at_us"], j["resolved_at_us"], j["time_to_resolution_s"]) == ("resolved", 100 * US, 100 * US, 0)
    j = one([status("T", 100, "solved"), ticket("T", 200), tmsg("T", 300, "customer")])
    assert (j["status"], j["resolved_at_us"], j["reopen_count"]) == ("resolved", 100 * US, 0)
    j = one([status("T", 100, "closed"), status("T", 150, "open")])
    assert (j["status"], j["resolved_at_us"], j["reopen_count"]) == ("open", None, 1)


def test_a_thread_is_open_strictly_before_an_event_and_ended_strictly_before():
    """Thread.is_open_before / last_end_before answer for the moment just before the event with
    the given sort key: a thread is not open before its own start, is still open just before
    the event that ends it, still ended just before the event that reopens it, and an end counts
    as "before" only for later events."""
    created, solved, reopened, closed = (ticket("T", 0), status("T", 100, "solved"), status("T", 200, "open"),
                                         status("T", 300, "closed"))
    thread = build_thread(("ticket", "T"), [created, solved, reopened, closed])
    after = ev(400, "ticket.message", ticket_id="T", author="customer")
    assert [thread.is_open_before(e.sort_key) for e in (created, solved, reopened, closed, after)] == [
        False, True, False, True, False]
    assert [thread.last_end_before(e.sort_key) for e in (created, solved, reopened, closed, after)] == [
        None, None, 100 * US, 100 * US, 300 * US]


def test_events_and_handlers_are_immutable_values():
    """One Event object sits in its thread's list, in the journey's sorted list and among the
    surveys at once, and thread_handoffs hands out the Handler of a thread's first assignment
    while it keeps comparing against it: neither may change under a holder. Both are frozen,
    equal values hash alike, and an Event carries no per-instance dict (slots: a recompute holds
    every stored event of each touched customer in memory)."""
    import dataclasses

    from transforms.journeys import Handler

    e = ticket("T", 0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.at_us = 1  # type: ignore[misc]
    assert hash(Event.from_row(e.to_row())) == hash(e) and not hasattr(e, "__dict__")
    h = Handler(agent="a1", team="billing")
    with pytest.raises(dataclasses.FrozenInstanceError):
        h.agent = "a2"  # type: ignore[misc]
    assert {Handler(agent="a1", team="billing"): 1}[h] == 1
