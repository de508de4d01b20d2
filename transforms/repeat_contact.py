"""Repeat contact after a resolution, on any channel, and one-contact resolution.

Journeys already absorb a new contact that starts within the repeat window (72 h) of the
journey's end. Contact-centre tools measure something wider: did the customer come back at all
within N days after we said "resolved", whatever the channel? This module answers that across
all of the customer's threads, also those that started a new journey.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from transforms.journeys import Thread

SortKey = tuple[int, int, str]


@dataclass(frozen=True)
class RepeatContact:
    thread: str  # 'ticket:<id>' / 'chat:<id>'
    at_us: int
    channel: Optional[str]
    after_s: float  # seconds after the resolution


def next_contact(all_threads: list[Thread], resolved_key: SortKey, resolved_us: int,
                 window_us: int) -> Optional[RepeatContact]:
    """The customer's first thread (any journey, any channel) that starts after the event that
    resolved the journey, if it starts at most ``window_us`` later (inclusive)."""
    later = [t for t in all_threads if t.order_key > resolved_key]
    if not later:
        return None
    first = min(later, key=lambda t: t.order_key)
    if first.start_us - resolved_us > window_us:
        return None
    return RepeatContact(f"{first.key[0]}:{first.key[1]}", first.start_us, first.channel,
                         (first.start_us - resolved_us) / 1_000_000)
