"""A deterministic simulator of contract v1 events for realistic multi-channel journeys.

The simulator is how newcomers see the product work and how tests and benchmarks get
realistic load, so its scenarios mirror what support desks actually see: escalations,
reassignments back and forth, team queues, bot handoffs, reopens, abandoned chats followed
by another channel, repeat contacts and surveys. Everything derives from one seed.
"""
from __future__ import annotations

import json
import random
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Optional

from pipelines.kafka.settings import KafkaSettings, failure_cause, probe_tls

MINUTE = 60.0
HOUR = 3600.0
DAY = 86400.0

AGENTS = [f"agent-{i:02d}" for i in range(1, 41)]
BOTS = ["bot-1", "bot-2"]
TEAMS = ["billing", "tech-support", "tier2", "onboarding", "returns"]
TICKET_CHANNELS = ["email", "web", "phone"]
CHAT_CHANNELS = ["chat", "chat", "chat", "messaging", "social", "sms"]
OFFSETS = [timedelta(hours=2), timedelta(hours=-5), timedelta(hours=5, minutes=30), timedelta(hours=-3)]

STREAM_OF_PREFIX = {"ticket": "tickets", "chat": "chats", "survey": "surveys"}


@dataclass
class _Writer:
    """Builds one customer's events; ids and times come from the shared random source."""

    rng: random.Random
    customer_id: str
    events: list[dict[str, Any]] = field(default_factory=list)
    counter: int = 0

    def _id(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}-{self.customer_id[5:]}-{self.counter}"

    def emit(self, at: datetime, event_type: str, **fields: Any) -> None:
        event = {
            "event_id": str(uuid.UUID(int=self.rng.getrandbits(128), version=4)),
            "event_type": event_type,
            "occurred_at": _render_time(at, self.rng),
            "customer_id": self.customer_id,
            "schema_version": 1,
        }
        event.update({k: v for k, v in fields.items() if v is not None})
        event["_at"] = at  # stripped before sending; used for ordering
        self.events.append(event)

    # ---- tickets
    def ticket(self, at: datetime, channel: str) -> str:
        tid = self._id("T")
        subject = self.rng.choice(["Refund request", "Cannot log in", "Invoice question", "Order missing", "Bug report"])
        self.emit(at, "ticket.created", ticket_id=tid, channel=channel, priority=self.rng.choice(["low", "normal", "high"]),
                  subject=subject)
        self.emit(at + timedelta(seconds=self.rng.uniform(1, 30)), "ticket.message", ticket_id=tid, author="customer",
                  channel=channel, public=True)
        return tid

    def assign(self, at: datetime, kind: str, thread_id: str, agent: Optional[str] = None, team: Optional[str] = None,
               bot: bool = False) -> None:
        key = "ticket_id" if kind == "ticket" else "chat_id"
        self.emit(at, f"{kind}.assigned", **{key: thread_id}, handler_type="bot" if bot else "agent", agent_id=agent, team=team)

    def tmsg(self, at: datetime, tid: str, author: str, channel: str) -> None:
        self.emit(at, "ticket.message", ticket_id=tid, author=author, channel=channel, public=author != "system")

    def status(self, at: datetime, tid: str, value: str) -> None:
        self.emit(at, "ticket.status_changed", ticket_id=tid, status=value)

    # ---- chats
    def chat(self, at: datetime, channel: str) -> str:
        cid = self._id("C")
        self.emit(at, "chat.started", chat_id=cid, channel=channel)
        self.emit(at + timedelta(seconds=self.rng.uniform(1, 10)), "chat.message", chat_id=cid, author="customer")
        return cid

    def cmsg(self, at: datetime, cid: str, author: str) -> None:
        self.emit(at, "chat.message", chat_id=cid, author=author)

    def chat_end(self, at: datetime, cid: str, outcome: str, ticket_id: Optional[str] = None) -> None:
        self.emit(at, "chat.ended", chat_id=cid, outcome=outcome, ticket_id=ticket_id)

    def survey(self, at: datetime, ticket_id: Optional[str] = None, chat_id: Optional[str] = None, mood: float = 0.7) -> None:
        happy = self.rng.random() < mood
        csat = self.rng.choice([4, 5, 5]) if happy else self.rng.choice([1, 2, 3])
        nps = self.rng.choice([8, 9, 10]) if happy else self.rng.randint(0, 7)
        fields: dict[str, Any] = {"survey_id": self._id("S"), "ticket_id": ticket_id, "chat_id": chat_id}
        roll = self.rng.random()
        if roll < 0.6:
            fields.update(csat=csat, nps=nps)
        elif roll < 0.85:
            fields["csat"] = csat
        else:
            fields["nps"] = nps
        if self.rng.random() < 0.2:
            fields["comment"] = self.rng.choice(["Thanks!", "Took too long", "Great help", "Had to repeat myself"])
        self.emit(at, "survey.responded", **fields)


def _render_time(at: datetime, rng: random.Random) -> str:
    """RFC 3339; most in UTC with 'Z', a few with another offset for the same instant."""
    if rng.random() < 0.04:
        local = at.astimezone(timezone(rng.choice(OFFSETS)))
        return local.isoformat(timespec="milliseconds")
    return at.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _after(at: datetime, rng: random.Random, low: float, high: float) -> datetime:
    return at + timedelta(seconds=rng.uniform(low, high))


def _maybe_survey(w: _Writer, at: datetime, ticket_id: Optional[str] = None, chat_id: Optional[str] = None, mood: float = 0.7) -> None:
    if w.rng.random() < 0.4:
        when = _after(at, w.rng, 10 * MINUTE, 2 * DAY)
        w.survey(when, ticket_id, chat_id, mood)
        if w.rng.random() < 0.15:
            w.survey(_after(when, w.rng, HOUR, 3 * DAY), ticket_id, chat_id, mood)


# ---------------------------------------------------------------- scenarios
# Each takes the writer and a start time and returns when the journey's last thread ended.


def simple_ticket(w: _Writer, t0: datetime) -> datetime:
    channel = w.rng.choice(["email", "web"])
    tid = w.ticket(t0, channel)
    agent, team = w.rng.choice(AGENTS), w.rng.choice(TEAMS)
    t = _after(t0, w.rng, 5 * MINUTE, 4 * HOUR)
    w.assign(t, "ticket", tid, agent, team)
    t = _after(t, w.rng, 5 * MINUTE, 8 * HOUR)
    w.tmsg(t, tid, "agent", channel)
    if w.rng.random() < 0.5:
        t = _after(t, w.rng, 30 * MINUTE, 12 * HOUR)
        w.tmsg(t, tid, "customer", channel)
        t = _after(t, w.rng, 10 * MINUTE, 6 * HOUR)
        w.tmsg(t, tid, "agent", channel)
    t = _after(t, w.rng, 10 * MINUTE, 2 * DAY)
    w.status(t, tid, "solved")
    if w.rng.random() < 0.5:
        w.status(_after(t, w.rng, 2 * DAY, 4 * DAY), tid, "closed")
    _maybe_survey(w, t, ticket_id=tid, mood=0.8)
    return t


def phone_ticket(w: _Writer, t0: datetime) -> datetime:
    tid = w.ticket(t0, "phone")
    w.assign(_after(t0, w.rng, 0, 60), "ticket", tid, w.rng.choice(AGENTS), "tech-support")
    t = _after(t0, w.rng, 60, 300)
    w.tmsg(t, tid, "agent", "phone")
    t = _after(t, w.rng, 5 * MINUTE, 30 * MINUTE)
    w.status(t, tid, "solved")
    _maybe_survey(w, t, ticket_id=tid, mood=0.85)
    return t


def bot_resolved_chat(w: _Writer, t0: datetime) -> datetime:
    cid = w.chat(t0, w.rng.choice(CHAT_CHANNELS))
    w.assign(_after(t0, w.rng, 1, 5), "chat", cid, w.rng.choice(BOTS), None, bot=True)
    t = _after(t0, w.rng, 5, 20)
    w.cmsg(t, cid, "bot")
    t = _after(t, w.rng, 20, 120)
    w.cmsg(t, cid, "customer")
    t = _after(t, w.rng, 5, 30)
    w.cmsg(t, cid, "bot")
    t = _after(t, w.rng, 30, 300)
    w.chat_end(t, cid, "resolved")
    _maybe_survey(w, t, chat_id=cid, mood=0.6)
    return t


def bot_to_agent_chat(w: _Writer, t0: datetime) -> datetime:
    channel = w.rng.choice(CHAT_CHANNELS)
    cid = w.chat(t0, channel)
    w.assign(_after(t0, w.rng, 1, 5), "chat", cid, w.rng.choice(BOTS), None, bot=True)
    t = _after(t0, w.rng, 5, 30)
    w.cmsg(t, cid, "bot")
    t = _after(t, w.rng, 30, 120)
    w.cmsg(t, cid, "customer")
    t = _after(t, w.rng, 10, 60)
    w.assign(t, "chat", cid, w.rng.choice(AGENTS), "tech-support")
    t = _after(t, w.rng, 30, 300)
    w.cmsg(t, cid, "agent")
    t = _after(t, w.rng, 60, 600)
    w.cmsg(t, cid, "customer")
    t = _after(t, w.rng, 60, 900)
    w.chat_end(t, cid, w.rng.choice(["resolved", "resolved", "resolved", "unresolved"]))
    _maybe_survey(w, t, chat_id=cid, mood=0.7)
    return t


def chat_escalated_to_ticket(w: _Writer, t0: datetime) -> datetime:
    cid = w.chat(t0, "chat")
    chat_agent = w.rng.choice(AGENTS)
    w.assign(_after(t0, w.rng, 5, 60), "chat", cid, chat_agent, "tech-support")
    t = _after(t0, w.rng, 60, 300)
    w.cmsg(t, cid, "agent")
    t = _after(t, w.rng, 60, 600)
    w.cmsg(t, cid, "customer")
    end = _after(t, w.rng, 120, 900)
    # the ticket is created just before or just after the chat ends
    created = _after(end, w.rng, -120, 600)
    channel = w.rng.choice(["email", "web"])
    tid = w._id("T")
    w.emit(created, "ticket.created", ticket_id=tid, channel=channel, priority="high", subject="Escalated from chat")
    w.chat_end(end, cid, "escalated", ticket_id=tid)
    t = _after(max(created, end), w.rng, 10 * MINUTE, 6 * HOUR)
    same_agent = w.rng.random() < 0.25
    w.assign(t, "ticket", tid, chat_agent if same_agent else w.rng.choice(AGENTS), "tech-support" if same_agent else "tier2")
    t = _after(t, w.rng, 30 * MINUTE, 12 * HOUR)
    w.tmsg(t, tid, "agent", channel)
    t = _after(t, w.rng, HOUR, 3 * DAY)
    w.status(t, tid, "solved")
    _maybe_survey(w, t, ticket_id=tid, mood=0.55)
    return t


def reassigned_ticket(w: _Writer, t0: datetime) -> datetime:
    channel = w.rng.choice(TICKET_CHANNELS)
    tid = w.ticket(t0, channel)
    a, b = w.rng.sample(AGENTS, 2)
    team_a, team_b = w.rng.sample(TEAMS, 2)
    t = _after(t0, w.rng, 5 * MINUTE, 2 * HOUR)
    w.assign(t, "ticket", tid, a, team_a)
    t = _after(t, w.rng, 30 * MINUTE, 8 * HOUR)
    w.assign(t, "ticket", tid, b, team_b)
    if w.rng.random() < 0.5:  # ping-pong back to the first agent
        t = _after(t, w.rng, 30 * MINUTE, 8 * HOUR)
        w.assign(t, "ticket", tid, a, team_a)
    t = _after(t, w.rng, 10 * MINUTE, 6 * HOUR)
    w.tmsg(t, tid, "agent", channel if channel != "phone" else "email")
    t = _after(t, w.rng, HOUR, 2 * DAY)
    w.status(t, tid, "solved")
    _maybe_survey(w, t, ticket_id=tid, mood=0.45)
    return t


def team_queue_ticket(w: _Writer, t0: datetime) -> datetime:
    channel = w.rng.choice(["email", "web"])
    tid = w.ticket(t0, channel)
    team = w.rng.choice(TEAMS)
    t = _after(t0, w.rng, 1, 60)
    w.assign(t, "ticket", tid, None, team)  # into the team's queue
    t = _after(t, w.rng, 10 * MINUTE, 6 * HOUR)
    w.assign(t, "ticket", tid, w.rng.choice(AGENTS), team)  # an agent picks it up
    if w.rng.random() < 0.3:  # back to the queue, another agent takes it
        t = _after(t, w.rng, 30 * MINUTE, 4 * HOUR)
        w.assign(t, "ticket", tid, None, team)
        t = _after(t, w.rng, 10 * MINUTE, 4 * HOUR)
        w.assign(t, "ticket", tid, w.rng.choice(AGENTS), team)
    t = _after(t, w.rng, 10 * MINUTE, 4 * HOUR)
    w.tmsg(t, tid, "agent", channel)
    t = _after(t, w.rng, HOUR, DAY)
    w.status(t, tid, "pending")
    t = _after(t, w.rng, HOUR, DAY)
    w.status(t, tid, "solved")
    _maybe_survey(w, t, ticket_id=tid, mood=0.75)
    return t


def reopened_ticket(w: _Writer, t0: datetime) -> datetime:
    channel = w.rng.choice(["email", "web"])
    tid = w.ticket(t0, channel)
    agent = w.rng.choice(AGENTS)
    t = _after(t0, w.rng, 10 * MINUTE, 3 * HOUR)
    w.assign(t, "ticket", tid, agent, w.rng.choice(TEAMS))
    t = _after(t, w.rng, 10 * MINUTE, 6 * HOUR)
    w.tmsg(t, tid, "agent", channel)
    t = _after(t, w.rng, HOUR, DAY)
    w.status(t, tid, "solved")
    t = _after(t, w.rng, HOUR, 2 * DAY)
    w.tmsg(t, tid, "customer", channel)  # "it is still broken"
    w.status(_after(t, w.rng, 1, 60), tid, "open")
    t = _after(t, w.rng, HOUR, DAY)
    w.tmsg(t, tid, "agent", channel)
    t = _after(t, w.rng, HOUR, DAY)
    w.status(t, tid, "solved")
    if w.rng.random() < 0.6:
        w.status(_after(t, w.rng, 2 * DAY, 4 * DAY), tid, "closed")
    _maybe_survey(w, t, ticket_id=tid, mood=0.35)
    return t


def abandoned_chat_then_email(w: _Writer, t0: datetime) -> datetime:
    cid = w.chat(t0, w.rng.choice(CHAT_CHANNELS))
    t = _after(t0, w.rng, 60, 900)  # nobody answered in time
    w.chat_end(t, cid, "abandoned")
    t = _after(t, w.rng, 10 * MINUTE, 6 * HOUR)
    return simple_ticket(w, t)


def open_ticket(w: _Writer, t0: datetime) -> datetime:
    channel = w.rng.choice(TICKET_CHANNELS)
    tid = w.ticket(t0, channel)
    if w.rng.random() < 0.6:
        t = _after(t0, w.rng, 10 * MINUTE, 6 * HOUR)
        w.assign(t, "ticket", tid, w.rng.choice(AGENTS), w.rng.choice(TEAMS))
        if w.rng.random() < 0.5:
            w.tmsg(_after(t, w.rng, 10 * MINUTE, 6 * HOUR), tid, "agent", channel if channel != "phone" else "email")
    return t0 + timedelta(days=365)  # still open: nothing joins by the repeat window


SCENARIOS: list[tuple[Callable[[_Writer, datetime], datetime], int]] = [
    (simple_ticket, 20),
    (phone_ticket, 8),
    (bot_resolved_chat, 10),
    (bot_to_agent_chat, 10),
    (chat_escalated_to_ticket, 12),
    (reassigned_ticket, 10),
    (team_queue_ticket, 8),
    (reopened_ticket, 8),
    (abandoned_chat_then_email, 7),
    (open_ticket, 7),
]


_ORDER = {"created": 0, "started": 0, "assigned": 1, "message": 2, "status_changed": 3, "ended": 4, "responded": 5}


def _customer(rng: random.Random, customer_id: str, t: datetime) -> list[dict[str, Any]]:
    """One customer's journeys from ``t`` on: one to three contacts, each a scenario (events keep ``_at``)."""
    funcs = [f for f, _ in SCENARIOS]
    weights = [wt for _, wt in SCENARIOS]
    writer = _Writer(rng, customer_id)
    for _ in range(rng.choices([1, 2, 3], weights=[60, 30, 10])[0]):
        scenario = rng.choices(funcs, weights=weights)[0]
        last_end = scenario(writer, t)
        if last_end > t + timedelta(days=300):
            break  # an open journey stays the customer's last
        gap = rng.uniform(HOUR, 48 * HOUR) if rng.random() < 0.15 else rng.uniform(80 * HOUR, 20 * DAY)
        t = last_end + timedelta(seconds=gap)
    return writer.events


def _event_order(e: dict[str, Any]) -> tuple[Any, int, str]:
    return e["_at"], _ORDER[e["event_type"].split(".")[1]], e["event_id"]


def generate_customer_events(customers: int, seed: int, start: datetime,
                             until: Optional[datetime] = None) -> list[dict[str, Any]]:
    """All events of ``customers`` simulated customers, in event-time order (pure, deterministic).

    ``until`` leaves out the events after that instant: they have not happened yet (journeys still
    in progress), and sending them would put future timestamps on the topics.
    """
    rng = random.Random(seed)
    if start.tzinfo is None:
        start = start.replace(tzinfo=timezone.utc)
    events: list[dict[str, Any]] = []
    for index in range(customers):
        t = start + timedelta(seconds=rng.uniform(0, 14 * DAY))
        events.extend(_customer(rng, f"cust-{index:06d}", t))
    if until is not None:
        events = [e for e in events if e["_at"] <= until]
    events.sort(key=_event_order)
    for e in events:
        del e["_at"]
    return events


# ---------------------------------------------------------------- live mode


@dataclass
class LiveStats:
    """What a live run sent; ``messages = events + duplicates + malformed``."""

    customers: int = 0
    events: int = 0
    duplicates: int = 0
    malformed: int = 0
    late: int = 0
    seconds: float = 0.0

    @property
    def messages(self) -> int:
        return self.events + self.duplicates + self.malformed


def run_live(
    settings: KafkaSettings,
    topics: dict[str, str],
    rate: float,
    speed: float = 1.0,
    duration_s: Optional[float] = None,
    seed: int = 42,
    out_of_order: float = 0.0,
    duplicates: float = 0.0,
    malformed: float = 0.0,
    should_stop: Callable[[], bool] = lambda: False,
    progress: Optional[Callable[[LiveStats], None]] = None,
) -> LiveStats:
    """Journeys unfolding at wall-clock time: ``rate`` new customers per second (Poisson arrivals).

    Each arriving customer gets the same realistic scenarios as the batch simulator, starting now;
    every event is sent when its moment comes, stamped with that moment, so no timestamp ever lies
    in the future. ``speed`` > 1 makes journeys unfold faster (60: an hour of a journey passes in a
    minute) — timestamps are still the wall-clock send time, so durations shrink by that factor.
    Mess: ``out_of_order`` delays a message's delivery by 0.2-5 s (its occurred_at unchanged),
    ``duplicates`` re-sends one 0.2-5 s later (a producer retry), ``malformed`` adds a broken message. The mix follows
    ``seed``; ids differ per run (the run's start time is mixed in), so reruns never collide.
    """
    import heapq
    import itertools

    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    if rate <= 0 or speed <= 0:
        raise ValueError("rate and speed must be positive")
    wall0 = time.time()
    rng = random.Random(seed * 1_000_003 + int(wall0 * 1000))
    token = f"{rng.getrandbits(32):08x}"
    sim0 = datetime.fromtimestamp(wall0, timezone.utc)

    def wall_of(at: datetime) -> datetime:
        return datetime.fromtimestamp(wall0 + (at - sim0).total_seconds() / speed, timezone.utc)

    tls_problem = probe_tls(settings)
    if tls_problem:
        raise SendError(f"cannot reach Kafka at {settings.bootstrap_servers}: {tls_problem}")
    try:
        producer = KafkaProducer(**settings.client_kwargs(), linger_ms=20, acks=1)
    except (KafkaError, OSError, ValueError) as exc:
        raise SendError(f"cannot reach Kafka at {settings.bootstrap_servers}: {exc!r}{failure_cause(settings)}") from None
    stats = LiveStats()
    queue: list[tuple[datetime, int, str, str, bytes, bytes]] = []  # (delivery sim time, seq, kind, stream, key, value)
    seq = itertools.count()
    next_arrival = sim0 + timedelta(seconds=rng.expovariate(rate) * speed)
    last_flush = last_progress = wall0
    try:
        while not should_stop():
            now = time.time()
            if duration_s is not None and now - wall0 >= duration_s:
                break
            sim_now = sim0 + timedelta(seconds=(now - wall0) * speed)
            while next_arrival <= sim_now:
                stats.customers += 1
                events = sorted(_customer(rng, f"live-{token}-{stats.customers:06d}", next_arrival), key=_event_order)
                for e in events:
                    at = e.pop("_at")
                    e["occurred_at"] = _render_time(wall_of(at), rng)
                    stream = STREAM_OF_PREFIX[e["event_type"].split(".")[0]]
                    key, value = e["customer_id"].encode(), json.dumps(e, separators=(",", ":")).encode()
                    deliver, kind = at, "events"
                    if out_of_order and rng.random() < out_of_order:
                        deliver, kind = at + timedelta(seconds=rng.uniform(0.2, 5) * speed), "late"
                    heapq.heappush(queue, (deliver, next(seq), kind, stream, key, value))
                    if duplicates and rng.random() < duplicates:
                        again = deliver + timedelta(seconds=rng.uniform(0.2, 5) * speed)
                        heapq.heappush(queue, (again, next(seq), "duplicates", stream, key, value))
                    if malformed and rng.random() < malformed:
                        bad = _malformed(rng, MALFORMED_KINDS[rng.randrange(len(MALFORMED_KINDS))], e)
                        heapq.heappush(queue, (at, next(seq), "malformed", *bad))
                next_arrival += timedelta(seconds=rng.expovariate(rate) * speed)
            while queue and queue[0][0] <= sim_now:
                _, _, kind, stream, key, value = heapq.heappop(queue)
                producer.send(topics[stream], key=key, value=value)
                if kind == "late":  # an event delivered after later ones: counted as an event, and as late
                    stats.late += 1
                    kind = "events"
                setattr(stats, kind, getattr(stats, kind) + 1)
            if now - last_flush >= 0.5:
                producer.flush(timeout=30)
                last_flush = now
            if progress and now - last_progress >= 5:
                last_progress = now
                stats.seconds = now - wall0
                progress(stats)
            due = min(queue[0][0] if queue else next_arrival, next_arrival)
            wait = (due - sim_now).total_seconds() / speed
            time.sleep(min(0.1, max(0.0, wait)))
        producer.flush(timeout=30)
    except KafkaError as exc:
        raise SendError(f"sending to {settings.bootstrap_servers} failed: {exc!r}{failure_cause(settings)}") from None
    finally:
        producer.close(timeout=5)
    stats.seconds = time.time() - wall0
    return stats


MALFORMED_KINDS = (
    "not_utf8", "not_json", "array", "missing_field", "unknown_type", "schema_v2", "bad_time", "wrong_type",
)


def _malformed(rng: random.Random, kind: str, template: dict[str, Any]) -> tuple[str, bytes, bytes]:
    stream = STREAM_OF_PREFIX[template["event_type"].split(".")[0]]
    key = template["customer_id"].encode()
    doc = dict(template, event_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)))
    if kind == "not_utf8":
        return stream, key, b"\xff\xfe" + json.dumps(doc).encode()[:40]
    if kind == "not_json":
        return stream, key, json.dumps(doc).encode()[:-7]
    if kind == "array":
        return stream, key, json.dumps([doc]).encode()
    if kind == "missing_field":
        doc.pop("customer_id", None)
    elif kind == "unknown_type":
        doc["event_type"] = doc["event_type"].split(".")[0] + ".deleted"
    elif kind == "schema_v2":
        doc["schema_version"] = 2
    elif kind == "bad_time":
        doc["occurred_at"] = "yesterday"
    elif kind == "wrong_type":
        stream = "surveys"
        doc = {**doc, "event_type": "survey.responded", "survey_id": "S-bad", "ticket_id": "T-bad", "csat": "five"}
    return stream, key, json.dumps(doc, separators=(",", ":")).encode()


def to_messages(
    events: list[dict[str, Any]], seed: int, out_of_order: float = 0.0, duplicates: float = 0.0, malformed: float = 0.0
) -> list[tuple[str, bytes, bytes]]:
    """(stream, key, value) in arrival order, with optional lateness, re-deliveries and garbage."""
    rng = random.Random(seed ^ 0x5EED)
    messages = [
        (STREAM_OF_PREFIX[e["event_type"].split(".")[0]], e["customer_id"].encode(), json.dumps(e, separators=(",", ":")).encode())
        for e in events
    ]
    n = len(messages)
    if out_of_order and n:
        late = sorted(rng.sample(range(n), int(n * out_of_order)), reverse=True)
        for i in late:
            message = messages.pop(i)
            messages.insert(min(len(messages), i + rng.randint(5, 500)), message)
    if duplicates and n:
        for i in sorted(rng.sample(range(n), int(n * duplicates)), reverse=True):
            messages.insert(min(len(messages), i + rng.randint(1, 300)), messages[i])
    if malformed and events:
        for k in range(int(n * malformed)):
            bad = _malformed(rng, MALFORMED_KINDS[k % len(MALFORMED_KINDS)], rng.choice(events))
            messages.insert(rng.randint(0, len(messages)), bad)
    return messages


class SendError(RuntimeError):
    """The broker could not take the messages; the message says why."""


def send_simulated(
    messages: list[tuple[str, bytes, bytes]],
    settings: KafkaSettings,
    topics: dict[str, str],
    rate: Optional[float] = None,
    progress: Optional[Callable[[int, int], None]] = None,
) -> int:
    """Sends simulated messages (key = customer_id, so a customer's events keep their order per
    partition). Not `cxj produce`, which sends an export file (pipelines/kafka/file_to_topic.py)."""
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    tls_problem = probe_tls(settings)  # kafka-python would hang on a listener that does not speak TLS
    if tls_problem:
        raise SendError(f"cannot reach Kafka at {settings.bootstrap_servers}: {tls_problem}")
    try:
        producer = KafkaProducer(**settings.client_kwargs(), linger_ms=20, batch_size=1 << 20, acks=1)
    except (KafkaError, OSError, ValueError) as exc:
        raise SendError(f"cannot reach Kafka at {settings.bootstrap_servers}: {exc!r}{failure_cause(settings)}") from None
    total = len(messages)
    started = time.monotonic()
    last_report = 0.0
    try:
        for sent, (stream, key, value) in enumerate(messages, start=1):
            producer.send(topics[stream], key=key, value=value)
            if rate:
                ahead = sent / rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
            if progress and time.monotonic() - last_report > 0.2:
                last_report = time.monotonic()
                progress(sent, total)
        producer.flush(timeout=60)
    except KafkaError as exc:
        raise SendError(f"sending to {settings.bootstrap_servers} failed: {exc!r}{failure_cause(settings)}") from None
    finally:
        producer.close(timeout=5)
    if progress:
        progress(total, total)
    return total
