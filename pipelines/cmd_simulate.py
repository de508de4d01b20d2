"""Send realistic simulated contract v1 events to Kafka.

Customers get multi-channel journeys: chats escalated into tickets, email/web/phone
tickets, reassignments (also back to an earlier agent), team queues, bot -> agent handoffs,
reopens, abandoned chats followed by another channel, surveys. Optional mess: out-of-order
arrival, re-delivered duplicates, malformed messages. The same seed gives the same events.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from datetime import datetime, timezone
from typing import Sequence

from pipelines.kafka_config import add_kafka_arguments, settings_from_args, topics_from_args

log = logging.getLogger("cxj.simulate")

DEFAULT_START = "2026-08-01T00:00:00+00:00"


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a fraction between 0 and 1")
    return value


def _start(text: str) -> datetime:
    if text == "now":
        return datetime.now(timezone.utc).replace(microsecond=0)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO timestamp or 'now'") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--customers", type=int, default=1000, help="customers to simulate (default %(default)s)")
    parser.add_argument("--seed", type=int, default=42, help="random seed; same seed, same events (default %(default)s)")
    parser.add_argument("--start", type=_start, default=DEFAULT_START,
                        help="event time of the first journeys, ISO 8601 or 'now' (default %(default)s)")
    parser.add_argument("--rate", type=float, default=None, help="messages per second (default: as fast as possible)")
    parser.add_argument("--out-of-order", type=_fraction, default=0.0, metavar="FRACTION",
                        help="fraction of messages delivered late (default 0)")
    parser.add_argument("--duplicates", type=_fraction, default=0.0, metavar="FRACTION",
                        help="fraction of messages delivered twice (default 0)")
    parser.add_argument("--malformed", type=_fraction, default=0.0, metavar="FRACTION",
                        help="fraction of extra malformed messages (default 0)")
    add_kafka_arguments(parser)


def progress_printer(label: str):  # type: ignore[no-untyped-def]
    started = time.monotonic()
    last_line = [started]

    def report(done: int, total: int) -> None:
        now = time.monotonic()
        elapsed = max(now - started, 1e-9)
        if sys.stderr.isatty():
            sys.stderr.write(f"\r{label}: {done}/{total} ({done / elapsed:,.0f}/s)   ")
            if done >= total:
                sys.stderr.write("\n")
            sys.stderr.flush()
        elif done >= total or now - last_line[0] >= 5:  # a log line every 5 s when not on a terminal
            last_line[0] = now
            log.info("%s: %d/%d (%.0f/s)", label, done, total, done / elapsed)

    return report


def simulate(args: argparse.Namespace) -> int:
    from pipelines.simulate import generate_customer_events, produce, to_messages

    events = generate_customer_events(args.customers, args.seed, args.start)
    messages = to_messages(events, args.seed, args.out_of_order, args.duplicates, args.malformed)
    log.info("simulated %d customers: %d events, %d messages to send", args.customers, len(events), len(messages))
    sent = produce(messages, settings_from_args(args), topics_from_args(args), args.rate,
                   progress_printer("sending") if not args.quiet else None)
    log.info("sent %d messages to %s", sent, args.bootstrap_servers)
    return sent


def main(args: argparse.Namespace, extra: Sequence[str]) -> int:
    try:
        simulate(args)
    except Exception as exc:  # the producer's errors are user-facing here: broker down, auth, ...
        log.error("simulate failed: %s", exc)
        return 3
    return 0
