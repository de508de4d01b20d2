"""Handoff taxonomy: every handoff of a journey, with who passed work to whom and of what kind.

``handoff_count`` says how often work changed hands; analysts also need to know *which* changes:
a bot passing a customer to a person is the bot doing its job, a person passing to another team
is a routing cost, a reassignment after an agent already replied makes the customer repeat
themselves. This module lists each handoff counted by ``transforms.journeys`` (the same rules,
imported from there, so the list and ``handoff_count`` can never disagree) with its kind, and
derives per-journey counts and ping-pong from that list, so every count can be audited row by
row in ``journey_handoffs``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from transforms.events import ASSIGN_TYPES, Event
from transforms.journeys import Handler, Thread, _after_assignment, _changes

SortKey = tuple[int, int, str]

KINDS = ("bot_to_human", "human_to_bot", "bot_to_bot", "team_to_team", "agent_to_agent")


@dataclass(frozen=True)
class Holder:
    """A handler plus whether its agent is a bot (None when no agent is known: a team queue)."""

    agent: Optional[str]
    team: Optional[str]
    bot: Optional[bool]

    @property
    def side(self) -> str:
        """'bot' for a bot, 'human' for a person or a team queue (queues are worked by people)."""
        return "bot" if self.bot else "human"


@dataclass(frozen=True)
class Handoff:
    at_us: int
    sort_key: SortKey
    event_id: str  # the assignment that made the handoff
    thread: str  # 'ticket:<id>' / 'chat:<id>' the work went to
    source: Holder
    target: Holder
    team_changed: bool
    agent_changed: bool
    escalation: bool
    after_first_reply: bool = False

    @property
    def kind(self) -> str:
        if self.source.side == "bot" and self.target.side == "human":
            return "bot_to_human"
        if self.source.side == "human" and self.target.side == "bot":
            return "human_to_bot"
        if self.source.side == "bot":
            return "bot_to_bot"
        return "team_to_team" if self.team_changed else "agent_to_agent"


def _apply(current: Holder, event: Event) -> Holder:
    """Handler state after an assignment (the journeys rule), plus bot-ness of its agent."""
    after = _after_assignment(Handler(current.agent, current.team), Handler(event.agent_id, event.team))
    if event.agent_id is not None:
        bot: Optional[bool] = event.handler_type == "bot"
    else:
        bot = current.bot if after.agent is not None else None
    return Holder(after.agent, after.team, bot)


def _label(key: tuple[str, str]) -> str:
    return f"{key[0]}:{key[1]}"


def _assignments(thread: Thread) -> list[Event]:
    return [e for e in thread.events if e.event_type in ASSIGN_TYPES]


def thread_walk(thread: Thread) -> tuple[list[Handoff], Optional[Holder], Optional[Holder], Optional[Event]]:
    """(handoffs within the thread, first holder, last holder, first assignment event)."""
    handoffs: list[Handoff] = []
    current: Optional[Holder] = None
    first: Optional[Holder] = None
    first_event: Optional[Event] = None
    for event in _assignments(thread):
        if current is None:
            current = _apply(Holder(None, None, None), event)
            first, first_event = current, event
            continue
        is_handoff, team_changed = _changes(Handler(current.agent, current.team), Handler(event.agent_id, event.team))
        after = _apply(current, event)
        if is_handoff:
            agent_changed = current.agent is not None and event.agent_id is not None and current.agent != event.agent_id
            handoffs.append(Handoff(event.at_us, event.sort_key, event.event_id, _label(thread.key), current, after,
                                    team_changed, agent_changed, escalation=False))
        current = after
    return handoffs, first, current, first_event


def journey_handoffs(threads: list[Thread], first_reply_key: Optional[SortKey]) -> list[Handoff]:
    """All handoffs of a journey in event order: within threads, and across escalation links
    (a chat's last handler -> its linked ticket's first assignment, when they differ)."""
    walks = {t.key: thread_walk(t) for t in threads}
    handoffs = [h for walk in walks.values() for h in walk[0]]
    by_key = {t.key: t for t in threads}
    for chat in (t for t in threads if t.key[0] == "chat"):
        chat_last = walks[chat.key][2]
        for ticket_id in chat.linked_tickets:
            ticket = by_key.get(("ticket", ticket_id))
            if ticket is None or chat_last is None:
                continue
            _, ticket_first, _, first_event = walks[ticket.key]
            if ticket_first is None or first_event is None:
                continue
            # the ticket's first assignment as it was sent (not the state after it) is what the
            # journeys rule compares with the chat's last handler
            is_handoff, team_changed = _changes(Handler(chat_last.agent, chat_last.team),
                                                Handler(first_event.agent_id, first_event.team))
            if is_handoff:
                agent_changed = (chat_last.agent is not None and first_event.agent_id is not None
                                 and chat_last.agent != first_event.agent_id)
                handoffs.append(Handoff(first_event.at_us, first_event.sort_key, first_event.event_id,
                                        _label(ticket.key), chat_last, ticket_first, team_changed, agent_changed,
                                        escalation=True))
    handoffs.sort(key=lambda h: (h.sort_key, h.escalation))
    if first_reply_key is not None:
        handoffs = [_after_reply(h, first_reply_key) for h in handoffs]
    return handoffs


def _after_reply(h: Handoff, first_reply_key: SortKey) -> Handoff:
    return Handoff(h.at_us, h.sort_key, h.event_id, h.thread, h.source, h.target, h.team_changed,
                   h.agent_changed, h.escalation, after_first_reply=h.sort_key > first_reply_key)


def handler_sequence(handoffs: list[Handoff], level: str) -> list[str]:
    """Who held the work, handoff by handoff (agents or teams): each handoff's source, then its
    target, unknown ones skipped, consecutive repeats collapsed."""
    sequence: list[str] = []
    for h in handoffs:
        for holder in (h.source, h.target):
            value = holder.agent if level == "agent" else holder.team
            if value is not None and (not sequence or sequence[-1] != value):
                sequence.append(value)
    return sequence


def pingpong(sequence: list[str]) -> tuple[int, int]:
    """(immediate returns A -> B -> A, any return to an earlier holder A -> ... -> A)."""
    immediate = sum(1 for i in range(2, len(sequence)) if sequence[i] == sequence[i - 2])
    returns = sum(1 for i in range(1, len(sequence)) if sequence[i] in sequence[:i])
    return immediate, returns


def handoff_counts(handoffs: list[Handoff], assignments: list[Event]) -> dict[str, Any]:
    """Per-journey counts of the taxonomy (columns of journey_metrics)."""
    kinds = [h.kind for h in handoffs]
    agents = handler_sequence(handoffs, "agent")
    teams = handler_sequence(handoffs, "team")
    agent_immediate, agent_returns = pingpong(agents)
    team_immediate, team_returns = pingpong(teams)
    humans = {e.agent_id for e in assignments if e.agent_id is not None and e.handler_type != "bot"}
    return {
        "bot_to_human_handoffs": kinds.count("bot_to_human"),
        "human_to_bot_handoffs": kinds.count("human_to_bot"),
        "bot_to_bot_handoffs": kinds.count("bot_to_bot"),
        "team_to_team_handoffs": kinds.count("team_to_team"),
        "agent_to_agent_handoffs": kinds.count("agent_to_agent"),
        "escalation_handoffs": sum(h.escalation for h in handoffs),
        "post_reply_reassignments": sum(h.after_first_reply for h in handoffs),
        "distinct_human_agents": len(humans),
        "distinct_teams": len({e.team for e in assignments if e.team is not None}),
        "agent_pingpong_immediate": agent_immediate,
        "agent_pingpong_returns": agent_returns,
        "team_pingpong_immediate": team_immediate,
        "team_pingpong_returns": team_returns,
    }


def handoff_rows(journey_id: str, customer_id: str, handoffs: list[Handoff]) -> list[dict[str, Any]]:
    """Rows of journey_handoffs (timestamps in epoch microseconds)."""
    return [
        {
            "journey_id": journey_id,
            "customer_id": customer_id,
            "seq": n,
            "at_us": h.at_us,
            "event_id": h.event_id,
            "thread": h.thread,
            "kind": h.kind,
            "from_agent": h.source.agent,
            "from_team": h.source.team,
            "from_is_bot": h.source.bot,
            "to_agent": h.target.agent,
            "to_team": h.target.team,
            "to_is_bot": h.target.bot,
            "team_changed": h.team_changed,
            "agent_changed": h.agent_changed,
            "escalation": h.escalation,
            "after_first_reply": h.after_first_reply,
        }
        for n, h in enumerate(handoffs, 1)
    ]
