"""Journey assembly and metrics: pure functions over one customer's events.

Everything here is a function of the *set* of a customer's events: the events are sorted by
(occurred_at, type rank, event_id) first, so results never depend on arrival order or on how
events were batched. The pipeline recomputes a customer's journeys from all their stored
events whenever a batch touches that customer, which makes incremental results equal to a
full recompute by construction.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, Iterable, Optional

from transforms.events import (
    ASSIGN_TYPES,
    CLOSED_STATUSES,
    MESSAGE_TYPES,
    START_TYPES,
    Event,
    ThreadKey,
)

DEFAULT_REPEAT_WINDOW_S = 72 * 3600
US = 1_000_000
SORT_KEY = attrgetter("sort_key")  # an event's place in event order (cheaper than a lambda per call)


# --------------------------------------------------------------------------------------
# Handlers and handoffs
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Handler:
    """Who holds a thread: an agent (human or bot), a team, or both. None = unknown."""

    agent: Optional[str] = None
    team: Optional[str] = None


@dataclass
class HandoffTally:
    handoffs: int = 0
    team_handoffs: int = 0


def _changes(previous: Handler, new: Handler) -> tuple[bool, bool]:
    """(is a handoff, team changed): a change needs both sides known and different."""
    team_changed = previous.team is not None and new.team is not None and previous.team != new.team
    agent_changed = previous.agent is not None and new.agent is not None and previous.agent != new.agent
    return (team_changed or agent_changed, team_changed)


def _after_assignment(current: Handler, assigned: Handler) -> Handler:
    """The handler state after an assignment.

    A team-only assignment keeps the last agent when the team stays (back to the same queue,
    so agent A -> queue -> agent B still compares A with B), and forgets it when the work
    moves to another team.
    """
    if assigned.agent is None:
        moved = current.team is not None and assigned.team is not None and assigned.team != current.team
        return Handler(agent=None if moved else current.agent, team=assigned.team)
    return Handler(agent=assigned.agent, team=assigned.team if assigned.team is not None else current.team)


def thread_handoffs(assignments: Iterable[Event]) -> tuple[HandoffTally, Optional[Handler], Optional[Handler]]:
    """Handoffs within one thread, plus its first assignment and final handler state."""
    tally = HandoffTally()
    current: Optional[Handler] = None
    first: Optional[Handler] = None
    for event in assignments:
        assigned = Handler(agent=event.agent_id, team=event.team)
        if current is None:
            first = assigned
            current = _after_assignment(Handler(), assigned)
            continue
        is_handoff, team_changed = _changes(current, assigned)
        tally.handoffs += is_handoff
        tally.team_handoffs += team_changed
        current = _after_assignment(current, assigned)
    return tally, first, current


# --------------------------------------------------------------------------------------
# Threads
# --------------------------------------------------------------------------------------


@dataclass
class Thread:
    """One ticket or chat: its events and the facts journey assembly needs from them."""

    key: ThreadKey
    events: list[Event]
    # (at_us, sort key, resolved) for each moment the thread stopped being open
    ends: list[tuple[int, tuple[int, int, str], bool]] = field(default_factory=list)
    # (at_us, sort key) for each reopening
    reopens: list[tuple[int, tuple[int, int, str]]] = field(default_factory=list)
    linked_tickets: list[str] = field(default_factory=list)

    @property
    def start_us(self) -> int:
        return self.events[0].at_us

    @property
    def order_key(self) -> tuple[int, int, str]:
        return self.events[0].sort_key

    @property
    def start_event(self) -> Optional[Event]:
        return next((e for e in self.events if e.event_type in START_TYPES), None)

    @property
    def channel(self) -> Optional[str]:
        start = self.start_event
        return start.channel if start is not None else None

    def is_open_before(self, key: tuple[int, int, str]) -> bool:
        """Open just before the event with sort key ``key``: started, and not ended since its
        last reopening. Compares full sort keys, so events at the same instant are taken in
        event order (type rank, then event_id), exactly as everywhere else.

        ``build_thread`` records ends and reopenings strictly alternating (end, reopen, end,
        ...), so the thread is open exactly when as many reopenings as ends came before."""
        if self.order_key >= key:
            return False
        ends_before = len([sk for _, sk, _ in self.ends if sk < key])
        reopens_before = len([sk for _, sk in self.reopens if sk < key])
        return ends_before == reopens_before

    def last_end_before(self, key: tuple[int, int, str]) -> Optional[int]:
        """When the thread last ended before the event with sort key ``key`` (epoch us)."""
        return max((at for at, sk, _ in self.ends if sk < key), default=None)


def build_thread(key: ThreadKey, events: list[Event]) -> Thread:
    """Walks a thread's events in order to find its ends, reopenings and escalation links."""
    thread = Thread(key=key, events=events)
    ended = False
    for event in events:
        if event.event_type == "ticket.status_changed":
            closing = event.status in CLOSED_STATUSES
            if closing and not ended:
                ended = True
                thread.ends.append((event.at_us, event.sort_key, True))
            elif not closing and ended:
                ended = False
                thread.reopens.append((event.at_us, event.sort_key))
        elif event.event_type == "chat.ended":
            # A chat ends once: a repeated chat.ended (re-emitted with a new event_id) changes
            # neither the end time nor the outcome, like solved -> closed on a ticket; its
            # ticket_id still links the ticket.
            if not ended:
                ended = True
                thread.ends.append((event.at_us, event.sort_key, event.outcome == "resolved"))
            if event.ticket_id and event.ticket_id not in thread.linked_tickets:
                thread.linked_tickets.append(event.ticket_id)
    return thread


# --------------------------------------------------------------------------------------
# Grouping threads into journeys
# --------------------------------------------------------------------------------------


class _Links:
    """Union-find over threads joined by escalation (chat.ended with ticket_id)."""

    def __init__(self) -> None:
        self.parent: dict[ThreadKey, ThreadKey] = {}

    def find(self, key: ThreadKey) -> ThreadKey:
        self.parent.setdefault(key, key)
        while self.parent[key] != key:
            self.parent[key] = self.parent[self.parent[key]]
            key = self.parent[key]
        return key

    def union(self, a: ThreadKey, b: ThreadKey) -> None:
        self.parent[self.find(a)] = self.find(b)


@dataclass
class _Group:
    threads: list[Thread] = field(default_factory=list)

    def accepts(self, start: tuple[int, int, str], repeat_window_us: int) -> bool:
        """A new thread (starting with sort key ``start``) joins if this journey has an open
        thread then, or its last-ending thread ended at most the repeat window before."""
        if any(t.is_open_before(start) for t in self.threads):
            return True
        last_end = max((e for t in self.threads if (e := t.last_end_before(start)) is not None), default=None)
        return last_end is not None and start[0] - last_end <= repeat_window_us


def group_threads(threads: list[Thread], repeat_window_s: float) -> list[list[Thread]]:
    """Assigns threads to journeys in order of their start (docs/metrics.md, "Journeys")."""
    known = {t.key for t in threads}
    links = _Links()
    for thread in threads:
        for ticket_id in thread.linked_tickets:
            if ("ticket", ticket_id) in known:
                links.union(thread.key, ("ticket", ticket_id))
    window_us = int(round(repeat_window_s * US))
    groups: list[_Group] = []
    group_of_link: dict[ThreadKey, _Group] = {}  # escalation-link root -> journey of its first thread
    for thread in sorted(threads, key=lambda t: t.order_key):
        root = links.find(thread.key)
        if root in group_of_link:
            target = group_of_link[root]
        elif groups and groups[-1].accepts(thread.order_key, window_us):
            target = groups[-1]
        else:
            target = _Group()
            groups.append(target)
        target.threads.append(thread)
        group_of_link.setdefault(root, target)
    return [g.threads for g in groups]


# --------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------


def journey_id_for(customer_id: str, first_thread: ThreadKey) -> str:
    """Stable id: the customer and the journey's first thread (not arrival order, not batches)."""
    digest = hashlib.blake2b(
        f"{customer_id}\x1f{first_thread[0]}\x1f{first_thread[1]}".encode(), digest_size=10
    ).hexdigest()
    return f"j_{digest}"


def _status_timeline(threads: list[Thread]) -> tuple[str, Optional[int]]:
    """Final status and the last time the journey became resolved.

    Replays every start, end and reopening in event order; after each one the journey is
    open if any thread is open, else resolved iff the thread that ended last ended resolved.
    """
    # (sort key, thread, outcome): the outcome is None for a start or a reopening, and whether
    # the thread ended resolved for an end.
    changes: list[tuple[tuple[int, int, str], ThreadKey, Optional[bool]]] = []
    for t in threads:
        changes.append((t.order_key, t.key, None))
        changes.extend((sk, t.key, resolved) for _, sk, resolved in t.ends)
        changes.extend((sk, t.key, None) for _, sk in t.reopens)
    # Each change is a distinct event, so sort keys tie only when a thread's first event is the
    # status change that ends it; the sort is stable and the start was appended first, so that
    # thread starts, then ends.
    changes.sort(key=lambda c: c[0])
    open_threads: set[ThreadKey] = set()
    status = "open"
    resolved_at: Optional[int] = None
    for sort_key, key, outcome in changes:
        if outcome is None:
            open_threads.add(key)
        else:
            open_threads.discard(key)
        # only an end can leave no thread open, so `outcome` is then the last end's outcome
        status = "open" if open_threads else ("resolved" if outcome else "unresolved")
        if status == "resolved":  # never two in a row: every thread was open just before it ended
            resolved_at = sort_key[0]
    return status, (resolved_at if status == "resolved" else None)


def _touchpoints(events: list[Event], chat_channels: dict[str, Optional[str]]) -> list[str]:
    """Channels of the customer's touchpoints in time order (thread starts, customer messages)."""
    channels: list[str] = []
    started: set[Optional[ThreadKey]] = set()
    for e in events:
        if e.event_type in START_TYPES:
            if e.thread in started:  # a thread starts once: a second created/started is no touchpoint
                continue
            started.add(e.thread)
            channel = e.channel
        elif e.event_type == "ticket.message" and e.author == "customer":
            channel = e.channel
        elif e.event_type == "chat.message" and e.author == "customer":
            channel = chat_channels.get(e.chat_id or "")
        else:
            continue
        if channel is not None:
            channels.append(channel)
    return channels


def _distinct(values: Iterable[Optional[str]]) -> list[str]:
    return list(dict.fromkeys(v for v in values if v is not None))


def _latest(values: Iterable[Optional[int]]) -> Optional[int]:
    last = None
    for v in values:
        if v is not None:
            last = v
    return last


def _escalation_handoffs(threads: list[Thread]) -> HandoffTally:
    """One handoff per escalated chat whose last handler differs from the ticket's first."""
    tally = HandoffTally()
    by_key = {t.key: t for t in threads}
    for chat in (t for t in threads if t.key[0] == "chat"):
        _, _, chat_last = thread_handoffs(e for e in chat.events if e.event_type in ASSIGN_TYPES)
        for ticket_id in chat.linked_tickets:
            ticket = by_key.get(("ticket", ticket_id))
            if ticket is None or chat_last is None:
                continue
            _, ticket_first, _ = thread_handoffs(e for e in ticket.events if e.event_type in ASSIGN_TYPES)
            if ticket_first is None:
                continue
            is_handoff, team_changed = _changes(chat_last, ticket_first)
            tally.handoffs += is_handoff
            tally.team_handoffs += team_changed
    return tally


def journey_metrics(customer_id: str, threads: list[Thread], surveys: list[Event],
                    events: Optional[list[Event]] = None) -> dict[str, Any]:
    """One journey row (timestamps in epoch microseconds) plus the ids of its events.

    ``events``: the journey's events (its threads' and ``surveys``) in event order, when the
    caller has them already: ``service_metrics.assemble_customer`` splits the customer's
    ordered events by journey in one pass, which spares sorting every journey again."""
    if events is None:
        events = sorted([e for t in threads for e in t.events] + surveys, key=lambda e: e.sort_key)
    started_us = min(t.start_us for t in threads)
    status, resolved_us = _status_timeline(threads)
    first_agent_reply = next(
        (e.at_us for e in events if e.event_type in MESSAGE_TYPES and e.author == "agent"), None
    )
    tally = HandoffTally()
    for thread in threads:
        within, _, _ = thread_handoffs(e for e in thread.events if e.event_type in ASSIGN_TYPES)
        tally.handoffs += within.handoffs
        tally.team_handoffs += within.team_handoffs
    escalations = _escalation_handoffs(threads)
    chat_channels = {t.key[1]: t.channel for t in threads if t.key[0] == "chat"}
    touch = _touchpoints(events, chat_channels)
    assignments = [e for e in events if e.event_type in ASSIGN_TYPES]
    reopen_count = sum(len(t.reopens) for t in threads)
    first_thread = min(threads, key=lambda t: t.order_key)
    surveys_in_order = surveys_sorted(surveys)
    return {
        "journey_id": journey_id_for(customer_id, first_thread.key),
        "customer_id": customer_id,
        "status": status,
        "started_at_us": started_us,
        "resolved_at_us": resolved_us,
        "last_event_at_us": max(e.at_us for e in events),
        "time_to_resolution_s": (resolved_us - started_us) / US if resolved_us is not None else None,
        "first_response_s": (first_agent_reply - started_us) / US if first_agent_reply is not None else None,
        "handoff_count": tally.handoffs + escalations.handoffs,
        "team_handoff_count": tally.team_handoffs + escalations.team_handoffs,
        "channel_hops": sum(1 for a, b in zip(touch, touch[1:]) if a != b),
        "touchpoint_count": len(touch),
        "contact_count": len(threads),
        "reopen_count": reopen_count,
        "csat": _latest(e.csat for e in surveys_in_order),
        "nps": _latest(e.nps for e in surveys_in_order),
        "fcr": status == "resolved" and len(threads) == 1 and reopen_count == 0,
        "channels": _distinct(touch),
        "agents": _distinct(e.agent_id for e in assignments),
        "teams": _distinct(e.team for e in assignments),
        "threads": [f"{k}:{i}" for k, i in (t.key for t in sorted(threads, key=lambda t: t.order_key))],
        "event_count": len(events),
        "event_ids": [e.event_id for e in events],
    }


def surveys_sorted(surveys: list[Event]) -> list[Event]:
    return sorted(surveys, key=lambda e: e.sort_key)


def _survey_thread(survey: Event, known: set[ThreadKey]) -> Optional[ThreadKey]:
    """A survey belongs to the thread it references; the ticket wins when both are known."""
    for key in (("ticket", survey.ticket_id), ("chat", survey.chat_id)):
        if key[1] and key in known:
            return key  # type: ignore[return-value]
    return None


def dedupe(events: Iterable[Event]) -> list[Event]:
    """One event per event_id, sorted in event order.

    Callers pass the winning copies (the pipeline picks them by content hash, see
    transforms.dedup), so what is left are exact duplicates, for which the choice is
    irrelevant; of several copies the first one in the input is kept.
    """
    unique: dict[str, Event] = {}
    for event in events:
        unique.setdefault(event.event_id, event)
    return sorted(unique.values(), key=SORT_KEY)


def customer_groups(
    customer_id: str, events: Iterable[Event], repeat_window_s: float = DEFAULT_REPEAT_WINDOW_S
) -> tuple[list[list[Thread]], dict[ThreadKey, list[Event]]]:
    """A customer's journeys as groups of threads, and the surveys of each known thread.

    Shared by ``assemble_journeys`` and the service metrics (``transforms.service_metrics``),
    so both see exactly the same journeys.
    """
    return groups_of_ordered(dedupe(e for e in events if e.customer_id == customer_id), repeat_window_s)


def groups_of_ordered(
    ordered: list[Event], repeat_window_s: float = DEFAULT_REPEAT_WINDOW_S
) -> tuple[list[list[Thread]], dict[ThreadKey, list[Event]]]:
    """``customer_groups`` of one customer's events that are de-duplicated and in event order
    already (``dedupe``'s result): the service metrics de-duplicate once for both."""
    by_thread: dict[ThreadKey, list[Event]] = {}
    surveys: list[Event] = []
    for event in ordered:
        key = event.thread
        if key is None:
            surveys.append(event)
        else:
            by_thread.setdefault(key, []).append(event)
    threads = [build_thread(key, evs) for key, evs in by_thread.items()]
    groups = group_threads(threads, repeat_window_s)
    known = set(by_thread)
    surveys_by_thread: dict[ThreadKey, list[Event]] = {}
    for survey in surveys:
        key = _survey_thread(survey, known)
        if key is not None:
            surveys_by_thread.setdefault(key, []).append(survey)
    return groups, surveys_by_thread


def assemble_journeys(
    customer_id: str, events: Iterable[Event], repeat_window_s: float = DEFAULT_REPEAT_WINDOW_S
) -> list[dict[str, Any]]:
    """All journeys of one customer from all of that customer's events.

    Surveys whose thread is unknown belong to no journey yet; they are kept by the caller
    and join as soon as the thread's events arrive.
    """
    groups, surveys_by_thread = customer_groups(customer_id, events, repeat_window_s)
    rows = []
    for group in groups:
        group_surveys = [s for t in group for s in surveys_by_thread.get(t.key, [])]
        rows.append(journey_metrics(customer_id, group, group_surveys))
    return rows
