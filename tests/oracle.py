"""An independent oracle for journeys: docs/metrics.md written a second way.

The property tests compare the pipeline and the pure functions in ``transforms/`` with this
module. To be a real second opinion it shares no code with them: it parses the raw JSON
itself, normalises timestamps itself, orders events by its own table, picks the winner among
conflicting copies by the documented rule, derives journey ids from the documented formula,
and walks each customer's events once, like a clock (the implementation instead builds
threads first and groups them afterwards). Nothing here imports from ``transforms`` or
``pipelines``: a mistake copied into both would otherwise pass unseen.
"""
from __future__ import annotations

import calendar
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

# docs/metrics.md, "Order of events": at one instant, starts, then assignments, then messages,
# then ticket status changes, then chat ends, then surveys; then event_id.
ORDER_AT_ONE_INSTANT = [
    ("ticket.created", "chat.started"),
    ("ticket.assigned", "chat.assigned"),
    ("ticket.message", "chat.message"),
    ("ticket.status_changed",),
    ("chat.ended",),
    ("survey.responded",),
]
RANK = {name: position for position, names in enumerate(ORDER_AT_ONE_INSTANT) for name in names}

RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:([Zz])|([+-])(\d{2}):(\d{2}))$"
)


def instant_us(text: str) -> int:
    """RFC 3339 text -> microseconds since the epoch; digits past the microsecond are dropped."""
    m = RFC3339.match(text)
    assert m, f"oracle cannot read timestamp {text!r}"
    year, month, day, hour, minute, second = (int(m.group(i)) for i in range(1, 7))
    micros = int(((m.group(7) or "") + "000000")[:6])
    offset_s = 0
    if m.group(9):
        offset_s = (int(m.group(10)) * 3600 + int(m.group(11)) * 60) * (1 if m.group(9) == "+" else -1)
    seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)) - offset_s
    return seconds * 1_000_000 + micros


def content_hash(doc: dict[str, Any]) -> str:
    """docs/metrics.md, "Duplicates": the hash that decides between conflicting copies."""
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def journey_id(customer: str, kind: str, thread_id: str) -> str:
    """docs/metrics.md, journey_id: ``j_`` + 20 hex digits of BLAKE2b over the customer, the
    first thread's kind and id, joined by the unit separator U+001F."""
    text = "\x1f".join([customer, kind, thread_id])
    return "j_" + hashlib.blake2b(text.encode("utf-8"), digest_size=10).hexdigest()


@dataclass
class Ev:
    """One event as the oracle sees it: the raw document plus its instant."""

    doc: dict[str, Any]
    at: int

    def __getattr__(self, name: str) -> Any:
        return self.doc.get(name)

    @property
    def key(self) -> tuple[int, int, str]:
        return (self.at, RANK[self.doc["event_type"]], self.doc["event_id"])

    @property
    def thread(self) -> Optional[tuple[str, str]]:
        kind = self.doc["event_type"].split(".")[0]
        if kind == "ticket":
            return ("ticket", self.doc["ticket_id"])
        if kind == "chat":
            return ("chat", self.doc["chat_id"])
        return None


def winners(lines: Iterable[str | bytes]) -> list[Ev]:
    """Every distinct event_id once: among copies that differ, the smallest content hash."""
    best: dict[str, tuple[str, dict[str, Any]]] = {}
    for line in lines:
        doc = json.loads(line)
        digest = content_hash(doc)
        if doc["event_id"] not in best or digest < best[doc["event_id"]][0]:
            best[doc["event_id"]] = (digest, doc)
    return [Ev(doc, instant_us(doc["occurred_at"])) for _, doc in best.values()]


@dataclass
class _Journey:
    threads: list[tuple[str, str]] = field(default_factory=list)
    events: list[Ev] = field(default_factory=list)
    status: str = "open"
    resolved_at: Optional[int] = None
    last_end: Optional[int] = None
    last_end_resolved: bool = False
    handoffs: int = 0
    team_handoffs: int = 0
    touchpoints: list[str] = field(default_factory=list)
    reopens: int = 0
    first_agent_reply: Optional[int] = None
    escalations: list[tuple[str, str]] = field(default_factory=list)  # (chat_id, ticket_id)


class _Holder:
    """Who holds one thread, following the handoff rules of docs/metrics.md."""

    def __init__(self) -> None:
        self.agent: Optional[str] = None
        self.team: Optional[str] = None
        self.assigned = False
        self.first: Optional[tuple[Optional[str], Optional[str]]] = None

    @staticmethod
    def differs(a: Optional[str], b: Optional[str]) -> bool:
        return a is not None and b is not None and a != b

    def assign(self, agent: Optional[str], team: Optional[str]) -> tuple[int, int]:
        """Applies one assignment; returns (handoffs, team handoffs) it counts."""
        if not self.assigned:
            self.assigned, self.first = True, (agent, team)
            self.agent, self.team = agent, team
            return 0, 0
        new_team = self.differs(self.team, team)
        counted = (1 if new_team or self.differs(self.agent, agent) else 0, 1 if new_team else 0)
        if agent is not None:
            self.agent = agent
            if team is not None:
                self.team = team
        else:  # a queue: the agent stays unless the work moved to another (known) team
            if new_team:
                self.agent = None
            self.team = team
        return counted


def journeys_of(customer: str, events: list[Ev], window_s: float = 72 * 3600) -> list[dict[str, Any]]:
    """All journey rows of one customer, each with the event ids linked to it."""
    mine = sorted((e for e in events if e.customer_id == customer), key=lambda e: e.key)
    threads_seen = {e.thread for e in mine if e.thread is not None}
    # escalation links known in hindsight: chat.ended naming a ticket this customer has
    group: dict[tuple[str, str], tuple[str, str]] = {t: t for t in threads_seen}

    def top(t: tuple[str, str]) -> tuple[str, str]:
        while group[t] != t:
            t = group[t]
        return t

    for e in mine:
        if e.event_type == "chat.ended" and e.ticket_id and ("ticket", e.ticket_id) in threads_seen:
            a, b = top(("chat", e.chat_id)), top(("ticket", e.ticket_id))
            if a != b:
                group[a] = b
    chat_channel: dict[str, str] = {}
    for e in mine:
        if e.event_type == "chat.started" and e.chat_id not in chat_channel:
            chat_channel[e.chat_id] = e.channel

    journeys: list[_Journey] = []
    home: dict[tuple[str, str], _Journey] = {}
    home_of_group: dict[tuple[str, str], _Journey] = {}
    open_now: dict[tuple[str, str], bool] = {}
    holders: dict[tuple[str, str], _Holder] = {}
    started_once: set[tuple[str, str]] = set()

    def status_of(j: _Journey) -> str:
        if any(open_now[t] for t in j.threads):
            return "open"
        return "resolved" if j.last_end_resolved else "unresolved"

    def settle(j: _Journey, at: int) -> None:
        now = status_of(j)
        if now == "resolved" and j.status != "resolved":
            j.resolved_at = at
        j.status = now

    for e in mine:
        t = e.thread
        if t is None:
            continue
        if t not in home:  # the thread starts with this event
            g = top(t)
            if g in home_of_group:
                j = home_of_group[g]
            elif journeys and (any(open_now[x] for x in journeys[-1].threads)
                               or (journeys[-1].last_end is not None
                                   and e.at - journeys[-1].last_end <= window_s * 1_000_000)):
                j = journeys[-1]
            else:
                j = _Journey()
                journeys.append(j)
            home_of_group.setdefault(g, j)
            home[t] = j
            j.threads.append(t)
            open_now[t] = True
            holders[t] = _Holder()
            settle(j, e.at)  # the journey is open from this instant
        j = home[t]
        j.events.append(e)
        kind = e.event_type
        if kind in ("ticket.created", "chat.started"):
            if t not in started_once:
                started_once.add(t)
                j.touchpoints.append(e.channel)
        elif kind == "ticket.message" and e.author == "customer":
            j.touchpoints.append(e.channel)
        elif kind == "chat.message" and e.author == "customer" and e.chat_id in chat_channel:
            j.touchpoints.append(chat_channel[e.chat_id])
        if kind in ("ticket.message", "chat.message") and e.author == "agent" and j.first_agent_reply is None:
            j.first_agent_reply = e.at
        if kind in ("ticket.assigned", "chat.assigned"):
            h, th = holders[t].assign(e.agent_id, e.team)
            j.handoffs += h
            j.team_handoffs += th
        ended: Optional[bool] = None
        if kind == "ticket.status_changed":
            closing = e.status in ("solved", "closed")
            if closing and open_now[t]:
                ended = True
            elif not closing and not open_now[t]:
                open_now[t] = True
                j.reopens += 1
        elif kind == "chat.ended":
            if e.ticket_id and ("ticket", e.ticket_id) in threads_seen and (e.chat_id, e.ticket_id) not in j.escalations:
                j.escalations.append((e.chat_id, e.ticket_id))
            if open_now[t]:
                ended = e.outcome == "resolved"
        if ended is not None:
            open_now[t] = False
            j.last_end, j.last_end_resolved = e.at, ended
        settle(j, e.at)

    for e in mine:  # surveys go to the ticket they name if it exists, else to the chat
        if e.event_type != "survey.responded":
            continue
        target = next((k for k in (("ticket", e.ticket_id), ("chat", e.chat_id)) if k[1] and k in home), None)
        if target is not None:
            home[target].events.append(e)

    rows = []
    for j in journeys:
        for chat_id, ticket_id in j.escalations:
            chat, ticket = holders[("chat", chat_id)], holders[("ticket", ticket_id)]
            if chat.assigned and ticket.assigned and ticket.first is not None:
                agent, team = ticket.first
                new_team = _Holder.differs(chat.team, team)
                j.handoffs += 1 if new_team or _Holder.differs(chat.agent, agent) else 0
                j.team_handoffs += 1 if new_team else 0
        ordered = sorted(j.events, key=lambda e: e.key)
        started = min(e.at for e in ordered if e.thread is not None)
        surveys = [e for e in ordered if e.event_type == "survey.responded"]
        touch = [c for c in j.touchpoints if c is not None]
        resolved_at = j.resolved_at if j.status == "resolved" else None

        def latest(name: str) -> Optional[int]:
            values = [s.doc.get(name) for s in surveys if s.doc.get(name) is not None]
            return values[-1] if values else None

        def distinct(values: Iterable[Optional[str]]) -> list[str]:
            return list(dict.fromkeys(v for v in values if v is not None))

        assignments = [e for e in ordered if e.event_type.endswith(".assigned")]
        rows.append({
            "journey_id": journey_id(customer, *j.threads[0]),
            "customer_id": customer,
            "status": j.status,
            "started_at": started,
            "resolved_at": resolved_at,
            "last_event_at": max(e.at for e in ordered),
            "time_to_resolution_s": None if resolved_at is None else (resolved_at - started) / 1e6,
            "first_response_s": None if j.first_agent_reply is None else (j.first_agent_reply - started) / 1e6,
            "handoff_count": j.handoffs,
            "team_handoff_count": j.team_handoffs,
            "channel_hops": sum(1 for a, b in zip(touch, touch[1:]) if a != b),
            "touchpoint_count": len(touch),
            "contact_count": len(j.threads),
            "reopen_count": j.reopens,
            "csat": latest("csat"),
            "nps": latest("nps"),
            "fcr": j.status == "resolved" and len(j.threads) == 1 and j.reopens == 0,
            "channels": distinct(touch),
            "agents": distinct(e.agent_id for e in assignments),
            "teams": distinct(e.team for e in assignments),
            "threads": [f"{kind}:{tid}" for kind, tid in j.threads],
            "event_count": len(ordered),
            "event_ids": sorted(e.event_id for e in ordered),
        })
    return rows


def all_journeys(lines: Iterable[str | bytes], window_s: float = 72 * 3600) -> list[dict[str, Any]]:
    """Journey rows (with ``event_ids``) of every customer in the raw lines."""
    events = winners(lines)
    customers = sorted({e.customer_id for e in events})
    return [row for c in customers for row in journeys_of(c, events, window_s)]
