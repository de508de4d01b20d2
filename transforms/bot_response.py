"""First human response after a bot, kept apart from bot replies.

When a journey starts with a bot, the customer's wait for a person begins when the bot hands
over, not when the journey started; and a bot's message is never a person's response. These
figures measure that wait from the bot -> human handoff (see ``transforms.handoff_kinds``).
"""
from __future__ import annotations

from typing import Any, Optional

from transforms.events import ASSIGN_TYPES, MESSAGE_TYPES, Event
from transforms.handoff_kinds import Handoff

US = 1_000_000


def bot_figures(events: list[Event], started_us: int, handoffs: list[Handoff]) -> dict[str, Any]:
    """started_with_bot, bot_only, first_bot_response_s, bot_handoff_at_us,
    first_human_response_after_bot_s for one journey (``events`` in event order)."""
    assignments = [e for e in events if e.event_type in ASSIGN_TYPES]
    messages = [e for e in events if e.event_type in MESSAGE_TYPES]
    started_with_bot = bool(assignments) and assignments[0].handler_type == "bot"
    agent_messages = [e for e in messages if e.author == "agent"]
    bot_messages = [e for e in messages if e.author == "bot"]
    bot_only = (bool(assignments) and all(e.handler_type == "bot" for e in assignments) and not agent_messages)
    first_bot = bot_messages[0].at_us if bot_messages else None
    handoff: Optional[Handoff] = None
    reply_s: Optional[float] = None
    if started_with_bot:
        handoff = next((h for h in handoffs if h.kind == "bot_to_human"), None)
        if handoff is not None:
            reply = next((e for e in agent_messages if e.sort_key > handoff.sort_key), None)
            reply_s = (reply.at_us - handoff.at_us) / US if reply is not None else None
    return {
        "started_with_bot": started_with_bot,
        "bot_only": bot_only,
        "first_bot_response_s": (first_bot - started_us) / US if first_bot is not None else None,
        "bot_handoff_at_us": handoff.at_us if handoff is not None else None,
        "first_human_response_after_bot_s": reply_s,
    }
