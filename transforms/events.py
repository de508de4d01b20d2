"""The parsed event: the one shape journey logic works on.

Events cross Beam stage boundaries and DuckDB round trips, so the row form uses only
primitive values (epoch microseconds instead of datetime objects): cheap to encode, exact,
and identical whether an event came from Kafka now or was reloaded from the store later.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Optional

# Order of events with equal occurred_at (docs/architecture.md, D10; docs/metrics.md, "Order of
# events"): starts, then assignments, then messages, then ticket status changes, then chat ends,
# then surveys; then event_id. Written as an order, so each rank is its position and no number can
# be mistyped. sql/models/staging/stg_events.sql computes the same type_rank;
# pipelines/storage/models_test.py checks that the two agree.
ORDER_AT_ONE_INSTANT: tuple[tuple[str, ...], ...] = (
    ("ticket.created", "chat.started"),
    ("ticket.assigned", "chat.assigned"),
    ("ticket.message", "chat.message"),
    ("ticket.status_changed",),
    ("chat.ended",),
    ("survey.responded",),
)
TYPE_RANK: dict[str, int] = {name: rank for rank, names in enumerate(ORDER_AT_ONE_INSTANT) for name in names}

STREAM_OF_TYPE: dict[str, str] = {
    "ticket.created": "tickets",
    "ticket.assigned": "tickets",
    "ticket.status_changed": "tickets",
    "ticket.message": "tickets",
    "chat.started": "chats",
    "chat.assigned": "chats",
    "chat.message": "chats",
    "chat.ended": "chats",
    "survey.responded": "surveys",
}

START_TYPES = frozenset({"ticket.created", "chat.started"})
ASSIGN_TYPES = frozenset({"ticket.assigned", "chat.assigned"})
MESSAGE_TYPES = frozenset({"ticket.message", "chat.message"})
CLOSED_STATUSES = frozenset({"solved", "closed"})

ThreadKey = tuple[str, str]  # ("ticket", ticket_id) | ("chat", chat_id)


@dataclass(frozen=True, slots=True)
class Event:
    """The contract fields journey logic reads; everything else stays in the stored payload."""

    event_id: str
    event_type: str
    at_us: int  # occurred_at as microseconds since the Unix epoch, UTC
    customer_id: str
    ticket_id: Optional[str] = None
    chat_id: Optional[str] = None
    survey_id: Optional[str] = None
    channel: Optional[str] = None
    handler_type: Optional[str] = None
    agent_id: Optional[str] = None
    team: Optional[str] = None
    status: Optional[str] = None
    author: Optional[str] = None
    outcome: Optional[str] = None
    csat: Optional[int] = None
    nps: Optional[int] = None

    @property
    def sort_key(self) -> tuple[int, int, str]:
        return (self.at_us, TYPE_RANK[self.event_type], self.event_id)

    @property
    def thread(self) -> Optional[ThreadKey]:
        """The thread the event belongs to; None for surveys, which reference a thread instead."""
        if self.event_type.startswith("ticket."):
            return ("ticket", self.ticket_id or "")
        if self.event_type.startswith("chat."):
            return ("chat", self.chat_id or "")
        return None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "Event":
        return cls(**{name: row.get(name) for name in EVENT_FIELDS})

    def to_row(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in EVENT_FIELDS}


EVENT_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Event))
