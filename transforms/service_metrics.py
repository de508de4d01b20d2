"""Service metrics per journey: business hours, kinds of resolution, handoff taxonomy, repeat
contact, first human response after a bot — the columns of ``journey_metrics`` — and the rows
of ``journey_handoffs``.

Like the journeys themselves, everything here is a pure function of the *set* of a customer's
events and the configuration (``transforms.metrics_config``): journeys are grouped by the same
function as ``assemble_journeys``, and the only notion of "now" is the customer's latest event
time (see ``transforms.resolution``). So batching and arrival order cannot change a value, and
recomputing a customer's journeys from all their events gives the incremental result.
"""
from __future__ import annotations

from operator import attrgetter
from typing import Any, Iterable, Optional

from transforms.bot_response import bot_figures
from transforms.business_hours import calendar_for, optional_business_seconds
from transforms.events import ASSIGN_TYPES, MESSAGE_TYPES, Event, ThreadKey
from transforms.handoff_kinds import handoff_counts, handoff_rows, journey_handoffs
from transforms.journeys import DEFAULT_REPEAT_WINDOW_S, Thread, dedupe, groups_of_ordered, journey_metrics
from transforms.metrics_config import MetricsConfig
from transforms.repeat_contact import next_contact
from transforms.resolution import durable_check_at, durably_resolved, resolved_spells

US = 1_000_000
Rows = list[dict[str, Any]]


def _seconds(a: int | None, b: int | None) -> float | None:
    return (b - a) / US if a is not None and b is not None else None


def service_row(journey: dict[str, Any], group: list[Thread], all_threads: list[Thread], watermark_us: int,
                config: MetricsConfig, events: Optional[list[Event]] = None) -> tuple[dict[str, Any], Rows]:
    """(journey_metrics row, journey_handoffs rows) of one journey; ``journey`` is its journeys row.

    ``events``: the events of the journey's threads in event order, when the caller has them
    already (``assemble_customer`` splits the customer's ordered events by journey in one
    pass instead of sorting each journey's again)."""
    if events is None:
        events = sorted((e for t in group for e in t.events), key=lambda e: e.sort_key)
    started = journey["started_at_us"]
    first_reply = next((e for e in events if e.event_type in MESSAGE_TYPES and e.author == "agent"), None)
    handoffs = journey_handoffs(group, first_reply.sort_key if first_reply is not None else None)
    assignments = [e for e in events if e.event_type in ASSIGN_TYPES]

    spells = resolved_spells(group)
    first_resolved = spells[0] if spells else None
    repeat = (next_contact(all_threads, first_resolved.start_key, first_resolved.start_us,
                           config.repeat_contact_window_us) if first_resolved is not None else None)

    calendar = calendar_for(config.calendars, journey["customer_id"], journey["teams"])
    first_resolved_us = first_resolved.start_us if first_resolved is not None else None
    first_reply_us = first_reply.at_us if first_reply is not None else None

    row: dict[str, Any] = {
        "journey_id": journey["journey_id"],
        "customer_id": journey["customer_id"],
        "calendar": calendar.name,
        "time_to_resolution_business_s": optional_business_seconds(calendar, started, journey["resolved_at_us"]),
        "first_response_business_s": optional_business_seconds(calendar, started, first_reply_us),
        "first_resolved_at_us": first_resolved_us,
        "first_resolution_s": _seconds(started, first_resolved_us),
        "first_resolution_business_s": optional_business_seconds(calendar, started, first_resolved_us),
        "resolution_count": len(spells),
        "durably_resolved": durably_resolved(spells, watermark_us, config.durable_us),
        "durable_check_at_us": durable_check_at(spells, watermark_us, config.durable_us),
        "repeat_contact_within_s": repeat.after_s if repeat is not None else None,
        "repeat_contact_thread": repeat.thread if repeat is not None else None,
        "repeat_contact_channel": repeat.channel if repeat is not None else None,
        "one_contact_resolution": bool(journey["fcr"]) and repeat is None,
    }
    row.update(bot_figures(events, started, handoffs))
    row.update(handoff_counts(handoffs, assignments))
    return row, handoff_rows(journey["journey_id"], journey["customer_id"], handoffs)


def _in_order(events: list[Event]) -> list[Event]:
    return sorted(events, key=attrgetter("sort_key"))


def _events_by_journey(groups: list[list[Thread]], surveys_by_thread: dict[ThreadKey, list[Event]]
                       ) -> tuple[list[list[Event]], list[list[Event]]]:
    """Per journey (index in ``groups``): the events of its threads, and those plus its surveys,
    each in event order (what ``journey_metrics`` and ``service_row`` would sort for
    themselves). Most journeys are one thread without a survey, whose events are in order
    already (a thread's events are a subsequence of the customer's ordered events): those are
    not sorted again; sort keys are unique per event, so sorting gives the one order there is."""
    thread_events: list[list[Event]] = []
    journey_events: list[list[Event]] = []
    for group in groups:
        own = group[0].events if len(group) == 1 else _in_order([e for t in group for e in t.events])
        surveys = [s for t in group for s in surveys_by_thread.get(t.key, ())]
        thread_events.append(own)
        journey_events.append(_in_order(own + surveys) if surveys else own)
    return thread_events, journey_events


def assemble_customer(customer_id: str, events: Iterable[Event], repeat_window_s: float = DEFAULT_REPEAT_WINDOW_S,
                      config: MetricsConfig = MetricsConfig()) -> tuple[Rows, Rows, Rows]:
    """(journeys rows, journey_metrics rows, journey_handoffs rows) of one customer.

    The journeys rows are exactly ``assemble_journeys``' (event_ids included)."""
    ordered = dedupe(e for e in events if e.customer_id == customer_id)  # the first delivery wins
    if not ordered:
        return [], [], []
    watermark_us = ordered[-1].at_us  # the customer's latest event ("now" in event time): ordered by time first
    groups, surveys_by_thread = groups_of_ordered(ordered, repeat_window_s)
    all_threads = [t for g in groups for t in g]
    thread_events, journey_events = _events_by_journey(groups, surveys_by_thread)
    journeys: Rows = []
    metrics: Rows = []
    handoffs: Rows = []
    for n, group in enumerate(groups):
        journey = journey_metrics(customer_id, group, [s for t in group for s in surveys_by_thread.get(t.key, [])],
                                  journey_events[n])
        row, rows = service_row(journey, group, all_threads, watermark_us, config, thread_events[n])
        journeys.append(journey)
        metrics.append(row)
        handoffs.extend(rows)
    return journeys, metrics, handoffs
