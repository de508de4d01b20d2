"""Handoff taxonomy: kinds, escalation, post-reply reassignments, ping-pong, and agreement with
journeys.handoff_count on random assignment sequences."""
from __future__ import annotations

import random

from transforms.handoff_kinds import handler_sequence, pingpong
from transforms.journeys_test import assign, ev, status, ticket
from transforms.service_metrics import assemble_customer


def chat(cid: str, t: float, **kw):
    return ev(t, "chat.started", chat_id=cid, channel="chat", **kw)


def message(thread: str, t: float, author: str):
    kind, tid = thread.split(":")
    if kind == "ticket":
        return ev(t, "ticket.message", ticket_id=tid, author=author, channel="email")
    return ev(t, "chat.message", chat_id=tid, author=author)


def run(events):
    journeys, metrics, handoffs = assemble_customer("c1", events)
    assert len(journeys) == 1
    return journeys[0], metrics[0], handoffs


def test_kinds_of_each_handoff():
    j, m, h = run([
        ticket("T1", 0),
        assign("ticket:T1", 1, "bot-1", "bots", handler="bot"),   # first: no handoff
        assign("ticket:T1", 2, "a1", "support"),                  # bot -> human (team changes too)
        assign("ticket:T1", 3, "bot-2", "support", handler="bot"),  # human -> bot
        assign("ticket:T1", 4, "bot-3", "support", handler="bot"),  # bot -> bot
        assign("ticket:T1", 5, "a2", "support"),                  # bot -> human
        assign("ticket:T1", 6, "a3", "support"),                  # agent -> agent
        assign("ticket:T1", 7, "a4", "billing"),                  # team -> team
        assign("ticket:T1", 8, None, "tech"),                     # team -> team (to a queue)
    ])
    assert [r["kind"] for r in h] == ["bot_to_human", "human_to_bot", "bot_to_bot", "bot_to_human",
                                      "agent_to_agent", "team_to_team", "team_to_team"]
    assert [r["seq"] for r in h] == list(range(1, 8))
    assert j["handoff_count"] == len(h) == 7
    assert j["team_handoff_count"] == sum(r["team_changed"] for r in h) == 3
    assert (m["bot_to_human_handoffs"], m["human_to_bot_handoffs"], m["bot_to_bot_handoffs"],
            m["agent_to_agent_handoffs"], m["team_to_team_handoffs"]) == (2, 1, 1, 1, 2)
    assert m["distinct_human_agents"] == 4 and m["distinct_teams"] == 4
    assert h[-1]["to_agent"] is None and h[-1]["to_is_bot"] is None and h[-1]["to_team"] == "tech"


def test_bot_to_a_queue_is_bot_to_human_and_the_pickup_is_no_handoff():
    _, m, h = run([chat("C1", 0), assign("chat:C1", 0, "bot-1", "bots", handler="bot"),
                   assign("chat:C1", 60, None, "support"), assign("chat:C1", 120, "a1", "support")])
    assert [(r["kind"], r["from_agent"], r["to_team"]) for r in h] == [("bot_to_human", "bot-1", "support")]
    assert m["started_with_bot"] and m["bot_handoff_at_us"] == 60_000_000


def test_escalation_handoff_is_listed_at_the_tickets_first_assignment():
    j, m, h = run([
        chat("C1", 0), assign("chat:C1", 1, "a1", "chat-team"),
        ev(10, "chat.ended", chat_id="C1", outcome="escalated", ticket_id="T1"),
        ticket("T1", 20), assign("ticket:T1", 30, "a3", "tier2"), status("T1", 40, "solved"),
    ])
    assert j["handoff_count"] == 1 and m["escalation_handoffs"] == 1
    assert [(r["kind"], r["escalation"], r["thread"], r["at_us"], r["from_agent"], r["to_agent"]) for r in h] == [
        ("team_to_team", True, "ticket:T1", 30_000_000, "a1", "a3")]


def test_post_reply_reassignment_needs_an_agent_message_before_it():
    _, m, h = run([
        ticket("T1", 0), assign("ticket:T1", 1, "a1", "s"), message("ticket:T1", 2, "bot"),
        assign("ticket:T1", 3, "a2", "s"),                     # before any agent reply
        message("ticket:T1", 4, "agent"),
        assign("ticket:T1", 4, "a3", "s"),                     # same instant: assignments sort first
        assign("ticket:T1", 5, "a1", "s"),                     # after the reply
    ])
    assert [r["after_first_reply"] for r in h] == [False, False, True]
    assert m["post_reply_reassignments"] == 1


def test_pingpong_two_ways():
    assert pingpong(["a", "b", "a"]) == (1, 1)
    assert pingpong(["a", "b", "c", "a"]) == (0, 1)
    assert pingpong(["a", "b", "a", "b"]) == (2, 2)
    assert pingpong(["a", "b", "c", "b", "a"]) == (1, 2)
    assert pingpong(["a"]) == (0, 0) and pingpong([]) == (0, 0)


def test_pingpong_of_a_journey_for_agents_and_teams():
    _, m, h = run([
        ticket("T1", 0), assign("ticket:T1", 1, "a1", "s"), assign("ticket:T1", 2, "a2", "b"),
        assign("ticket:T1", 3, "a3", "t"), assign("ticket:T1", 4, "a1", "s"),
    ])
    assert handler_sequence([], "agent") == []
    assert (m["agent_pingpong_immediate"], m["agent_pingpong_returns"]) == (0, 1)
    assert (m["team_pingpong_immediate"], m["team_pingpong_returns"]) == (0, 1)


def test_handoff_rows_always_add_up_to_handoff_count():
    """Random assignment sequences across a chat escalated into a ticket: the listed handoffs are
    exactly the ones journeys counts, and the kinds partition them."""
    rng = random.Random(7)
    agents = [("a1", "agent"), ("a2", "agent"), ("bot-1", "bot"), ("bot-2", "bot"), (None, None)]
    teams = ["s", "b", None]
    for _ in range(300):
        events = [chat("C1", 0), ticket("T1", 1000)]
        t = 0
        for thread in ("chat:C1", "ticket:T1"):
            for _ in range(rng.randint(0, 6)):
                t += rng.choice([0, 1, 5])
                agent, handler = rng.choice(agents)
                team = rng.choice(teams) if agent else rng.choice(["s", "b"])
                events.append(assign(thread, t if thread == "chat:C1" else 1000 + t, agent, team,
                                     handler=handler or "agent"))
                if rng.random() < 0.3:
                    events.append(message(thread, (t if thread == "chat:C1" else 1000 + t), rng.choice(["agent", "bot"])))
        events.append(ev(999, "chat.ended", chat_id="C1", outcome="escalated", ticket_id="T1"))
        j, m, h = run(events)
        assert len(h) == j["handoff_count"]
        assert sum(r["team_changed"] for r in h) == j["team_handoff_count"]
        assert sum(m[f"{k}_handoffs"] for k in ("bot_to_human", "human_to_bot", "bot_to_bot", "team_to_team",
                                                  "agent_to_agent")) == j["handoff_count"]
        assert all(r["team_changed"] or r["agent_changed"] for r in h)
        assert [r["at_us"] for r in h] == sorted(r["at_us"] for r in h)
