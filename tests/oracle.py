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
            values = [s.doc.get(name) for s in surveys if s.doc.get(name) is not None]  # noqa: B023 (called within this iteration)
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


# ------------------------------------------------------------------------------------------
# Service metrics (docs/metrics.md, "Service metrics"), written from that text a second way:
# handoffs are re-derived from the raw assignments with their own holder state, resolution
# spells by replaying each journey's raw events once. Business hours are not here (a
# minute-by-minute count is too slow for random multi-week journeys); transforms/
# business_hours_test.py checks them against a brute-force count instead.
# ------------------------------------------------------------------------------------------

DAY_US = 86_400 * 1_000_000


def _handoffs_of(journey_events: list[Ev]) -> list[dict[str, Any]]:
    """Every handoff of one journey, in event order: (key, from, to, team, escalation)."""
    state: dict[tuple[str, str], dict[str, Any]] = {}
    first: dict[tuple[str, str], Ev] = {}
    links: list[tuple[str, str]] = []
    found: list[dict[str, Any]] = []
    threads = {e.thread for e in journey_events if e.thread is not None}
    for e in journey_events:
        t = e.thread
        if e.event_type == "chat.ended" and e.ticket_id and ("ticket", e.ticket_id) in threads:
            if (e.chat_id, e.ticket_id) not in links:
                links.append((e.chat_id, e.ticket_id))
        if not e.event_type.endswith(".assigned"):
            continue
        is_bot = e.handler_type == "bot"
        if t not in state:
            state[t] = {"agent": e.agent_id, "team": e.team, "bot": is_bot if e.agent_id else None}
            first[t] = e
            continue
        before = dict(state[t])
        team_moved = before["team"] is not None and e.team is not None and before["team"] != e.team
        agent_moved = before["agent"] is not None and e.agent_id is not None and before["agent"] != e.agent_id
        if e.agent_id is not None:
            state[t] = {"agent": e.agent_id, "team": e.team if e.team is not None else before["team"], "bot": is_bot}
        else:
            keep = not team_moved
            state[t] = {"agent": before["agent"] if keep else None, "team": e.team, "bot": before["bot"] if keep else None}
        if team_moved or agent_moved:
            found.append({"key": e.key, "from": before, "to": dict(state[t]), "team": team_moved, "escalation": False})
    for chat_id, ticket_id in links:
        chat, ticket = ("chat", chat_id), ("ticket", ticket_id)
        if chat in state and ticket in first:
            a, e = state[chat], first[ticket]
            team_moved = a["team"] is not None and e.team is not None and a["team"] != e.team
            agent_moved = a["agent"] is not None and e.agent_id is not None and a["agent"] != e.agent_id
            if team_moved or agent_moved:
                to = {"agent": e.agent_id, "team": e.team, "bot": (e.handler_type == "bot") if e.agent_id else None}
                found.append({"key": e.key, "from": dict(a), "to": to, "team": team_moved, "escalation": True})
    found.sort(key=lambda h: (h["key"], h["escalation"]))
    for h in found:
        src = "bot" if h["from"]["bot"] else "human"
        dst = "bot" if h["to"]["bot"] else "human"
        if src == "bot":
            h["kind"] = "bot_to_human" if dst == "human" else "bot_to_bot"
        elif dst == "bot":
            h["kind"] = "human_to_bot"
        else:
            h["kind"] = "team_to_team" if h["team"] else "agent_to_agent"
    return found


def _returns(holders: list[str]) -> tuple[int, int]:
    immediate = sum(1 for i, h in enumerate(holders) if i >= 2 and holders[i - 2] == h)
    anywhere = sum(1 for i, h in enumerate(holders) if h in holders[:i])
    return immediate, anywhere


def _holders(handoffs: list[dict[str, Any]], level: str) -> list[str]:
    out: list[str] = []
    for h in handoffs:
        for side in (h["from"], h["to"]):
            v = side[level]
            if v is not None and (not out or out[-1] != v):
                out.append(v)
    return out


def _spells(journey_events: list[Ev]) -> list[list[Any]]:
    """[start_at, start_key, end_at or None] for each period the journey stayed resolved."""
    open_: dict[tuple[str, str], bool] = {}
    chat_done: set[str] = set()
    last_resolved = False
    resolved = False
    spells: list[list[Any]] = []
    def settle(e: Ev) -> None:
        nonlocal resolved
        now = not any(open_.values()) and last_resolved
        if now and not resolved:
            spells.append([e.at, e.key, None])
        elif resolved and not now:
            spells[-1][2] = e.at
        resolved = now

    for e in journey_events:
        t = e.thread
        if t is None:
            continue
        if t not in open_:  # a thread starting opens the journey at that instant, whatever its event
            open_[t] = True
            settle(e)
        if e.event_type == "ticket.status_changed":
            if e.status in ("solved", "closed"):
                if open_[t]:
                    open_[t], last_resolved = False, True
            elif not open_[t]:
                open_[t] = True
        elif e.event_type == "chat.ended" and e.chat_id not in chat_done:
            chat_done.add(e.chat_id)
            open_[t], last_resolved = False, e.outcome == "resolved"
        settle(e)
    return spells


def service_rows(lines: Iterable[str | bytes], durable_days: float = 7, repeat_days: float = 7,
                 window_s: float = 72 * 3600) -> list[dict[str, Any]]:
    """The journey_metrics columns this oracle covers (all but business hours and calendar)."""
    lines = list(lines)
    events = winners(lines)
    by_id = {e.event_id: e for e in events}
    out = []
    for row in all_journeys(lines, window_s):
        customer = row["customer_id"]
        mine = sorted((e for e in events if e.customer_id == customer), key=lambda e: e.key)
        latest = max(e.at for e in mine)
        thread_starts: dict[tuple[str, str], Ev] = {}
        for e in mine:
            if e.thread is not None and e.thread not in thread_starts:
                thread_starts[e.thread] = e
        evs = sorted((by_id[i] for i in row["event_ids"]), key=lambda e: e.key)
        evs = [e for e in evs if e.thread is not None]
        started = row["started_at"]
        handoffs = _handoffs_of(evs)
        messages = [e for e in evs if e.event_type.endswith(".message")]
        agent_msgs = [e for e in messages if e.author == "agent"]
        bot_msgs = [e for e in messages if e.author == "bot"]
        assigns = [e for e in evs if e.event_type.endswith(".assigned")]
        reply_key = agent_msgs[0].key if agent_msgs else None
        spells = _spells(evs)
        durable: Optional[bool] = None
        check_at: Optional[int] = None
        if spells:
            held = any(((end if end is not None else latest) - start) >= durable_days * DAY_US for start, _, end in spells)
            if held:
                durable = True
            elif spells[-1][2] is None:
                check_at = spells[-1][0] + int(round(durable_days * DAY_US))
            else:
                durable = False
        repeat = None
        if spells:
            later = [(e.key, t, e) for t, e in thread_starts.items() if e.key > spells[0][1]]
            if later:
                _, t, e = min(later)
                if e.at - spells[0][0] <= repeat_days * DAY_US:
                    start_event = next((x for x in mine if x.thread == t
                                        and x.event_type in ("ticket.created", "chat.started")), None)
                    repeat = ((e.at - spells[0][0]) / 1e6, f"{t[0]}:{t[1]}", start_event.channel if start_event else None)
        with_bot = bool(assigns) and assigns[0].handler_type == "bot"
        bot_handoff = next((h for h in handoffs if h["kind"] == "bot_to_human"), None) if with_bot else None
        human_reply = (next((m for m in agent_msgs if m.key > bot_handoff["key"]), None)
                       if bot_handoff is not None else None)
        kinds = [h["kind"] for h in handoffs]
        agents = _holders(handoffs, "agent")
        teams = _holders(handoffs, "team")
        out.append({
            "journey_id": row["journey_id"],
            "customer_id": customer,
            "first_resolved_at_us": spells[0][0] if spells else None,
            "first_resolution_s": (spells[0][0] - started) / 1e6 if spells else None,
            "resolution_count": len(spells),
            "durably_resolved": durable,
            "durable_check_at_us": check_at,
            "repeat_contact_within_s": repeat[0] if repeat else None,
            "repeat_contact_thread": repeat[1] if repeat else None,
            "repeat_contact_channel": repeat[2] if repeat else None,
            "one_contact_resolution": row["fcr"] and repeat is None,
            "started_with_bot": with_bot,
            "bot_only": bool(assigns) and all(a.handler_type == "bot" for a in assigns) and not agent_msgs,
            "first_bot_response_s": (bot_msgs[0].at - started) / 1e6 if bot_msgs else None,
            "bot_handoff_at_us": bot_handoff["key"][0] if bot_handoff else None,
            "first_human_response_after_bot_s": ((human_reply.at - bot_handoff["key"][0]) / 1e6
                                                 if human_reply is not None else None),
            **{f"{k}_handoffs": kinds.count(k) for k in
               ("bot_to_human", "human_to_bot", "bot_to_bot", "team_to_team", "agent_to_agent")},
            "escalation_handoffs": sum(h["escalation"] for h in handoffs),
            "post_reply_reassignments": sum(1 for h in handoffs if reply_key is not None and h["key"] > reply_key),
            "distinct_human_agents": len({a.agent_id for a in assigns if a.agent_id and a.handler_type != "bot"}),
            "distinct_teams": len({a.team for a in assigns if a.team}),
            "agent_pingpong_immediate": _returns(agents)[0],
            "agent_pingpong_returns": _returns(agents)[1],
            "team_pingpong_immediate": _returns(teams)[0],
            "team_pingpong_returns": _returns(teams)[1],
        })
    return out
