"""Kinds of resolution: first, full (the journeys table's resolved_at) and durable.

A journey can become resolved several times (reopenings, new contacts joining it). Each period
during which it stays resolved is a *resolved spell*. The first spell's start is the first
resolution; the last spell's start (if the journey is resolved now) is the full resolution; a
resolution is *durable* when a spell lasted at least N days.

"N days later" is judged in event time only, never on the wall clock, so a journey stays a pure
function of its customer's events: a spell still running counts as lasting until the
customer's latest known event (``watermark_us``). Until that watermark is N days past the spell's
start, durability is unknown (None).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from transforms.journeys import Thread

SortKey = tuple[int, int, str]


@dataclass(frozen=True)
class Spell:
    """A period in which the journey was resolved: from the event that resolved it to the one
    that ended the state (None: still resolved)."""

    start_us: int
    start_key: SortKey
    end_us: Optional[int] = None
    end_key: Optional[SortKey] = None


def resolved_spells(threads: list[Thread]) -> list[Spell]:
    """Replays starts, ends and reopenings in event order (the journeys status rule: open while
    any thread is open, else resolved iff the last-ending thread ended resolved)."""
    changes: list[tuple[SortKey, int, str, tuple[str, str], bool]] = []
    for t in threads:
        changes.append((t.order_key, 0, "start", t.key, False))
        changes.extend((sk, 2, "end", t.key, resolved) for _, sk, resolved in t.ends)
        changes.extend((sk, 1, "reopen", t.key, False) for _, sk in t.reopens)
    changes.sort(key=lambda c: (c[0], c[1]))
    open_threads: set[tuple[str, str]] = set()
    last_end_resolved = False
    spells: list[Spell] = []
    resolved = False
    for key, _, kind, thread, ended_resolved in changes:
        if kind == "end":
            open_threads.discard(thread)
            last_end_resolved = ended_resolved
        else:
            open_threads.add(thread)
        now_resolved = not open_threads and last_end_resolved
        if now_resolved and not resolved:
            spells.append(Spell(key[0], key))
        elif resolved and not now_resolved:
            last = spells[-1]
            spells[-1] = Spell(last.start_us, last.start_key, key[0], key)
        resolved = now_resolved
    return spells


def durably_resolved(spells: list[Spell], watermark_us: int, durable_us: int) -> Optional[bool]:
    """True once a spell has lasted ``durable_us`` (inclusive); None while the running spell is
    younger than that at the watermark (or the journey never resolved); else False."""
    if not spells:
        return None
    for spell in spells:
        until = spell.end_us if spell.end_us is not None else watermark_us
        if until - spell.start_us >= durable_us:
            return True
    if spells[-1].end_us is None:
        return None
    return False


def durable_check_at(spells: list[Spell], watermark_us: int, durable_us: int) -> Optional[int]:
    """When the running spell becomes durable if nothing ends it (epoch us); None unless pending."""
    if spells and durably_resolved(spells, watermark_us, durable_us) is None:
        return spells[-1].start_us + durable_us
    return None
