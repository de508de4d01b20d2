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
from datetime import datetime, timedelta, timezone
from typing import Sequence

from pipelines.config.durations import parse_duration
from pipelines.kafka.settings import add_kafka_arguments, settings_from_args, topics_from_args

log = logging.getLogger("cxj.simulate")

DEFAULT_START = "2026-08-01T00:00:00+00:00"


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a fraction between 0 and 1")
    return value


def _start(text: str) -> datetime | str:
    if text == "now":
        return "now"  # resolved in simulate(): the history ends now
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO timestamp or 'now'") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--customers", type=int, default=None, help="customers to simulate (default 1000; not with --live)")
    parser.add_argument("--seed", type=int, default=42, help="random seed; same seed, same events (default %(default)s)")
    parser.add_argument("--start", type=_start, default=DEFAULT_START,
                        help="event time of the first journeys, ISO 8601, or 'now': three weeks of history ending now, "
                             "journeys still in progress included and nothing in the future (default %(default)s)")
    parser.add_argument("--rate", type=float, default=None,
                        help="messages per second (default: as fast as possible); with --live: new customer journeys "
                             "per second (default 5)")
    live = parser.add_argument_group("live mode")
    live.add_argument("--live", action="store_true",
                      help="journeys unfold at wall-clock time until Ctrl-C/--duration: each event is sent when it "
                           "happens, stamped with that time (for watching dashboards move)")
    live.add_argument("--speed", type=float, default=1.0, metavar="FACTOR",
                      help="--live: journeys unfold this many times faster (60: an hour of a journey in a minute); "
                           "timestamps stay the wall-clock send time (default 1)")
    live.add_argument("--duration", type=parse_duration, default=None, metavar="DURATION",
                      help="--live: stop after this long (e.g. 90s, 2h; default: until Ctrl-C or SIGTERM)")
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


HISTORY_BEFORE_NOW = timedelta(days=21)  # customers start over two weeks; most journeys settle within a week


def simulate(args: argparse.Namespace) -> int:
    from pipelines.kafka.simulator import generate_customer_events, send_simulated, to_messages

    customers = 1000 if args.customers is None else args.customers
    start, until = args.start, None
    if start == "now":
        until = datetime.now(timezone.utc).replace(microsecond=0)
        start = until - HISTORY_BEFORE_NOW
    events = generate_customer_events(customers, args.seed, start, until)
    if until is not None:
        log.info("history from %s to now; events after now are left out (they have not happened yet)", start.isoformat())
    messages = to_messages(events, args.seed, args.out_of_order, args.duplicates, args.malformed)
    log.info("simulated %d customers: %d events, %d messages to send", customers, len(events), len(messages))
    sent = send_simulated(messages, settings_from_args(args), topics_from_args(args), args.rate,
                   progress_printer("sending") if not args.quiet else None)
    log.info("sent %d messages to %s", sent, args.bootstrap_servers)
    return sent


def live(args: argparse.Namespace) -> int:
    from pipelines.config.run_config import Stopper
    from pipelines.kafka.simulator import LiveStats, run_live

    stopper = Stopper()
    stopper.install()
    rate = 5.0 if args.rate is None else args.rate

    def report(stats: LiveStats) -> None:
        log.info("live: %d customers arrived, %d messages sent (%.1f/s)", stats.customers, stats.messages,
                 stats.messages / max(stats.seconds, 1e-9),
                 extra={"fields": {"customers": stats.customers, "messages": stats.messages, "events": stats.events,
                                   "duplicates": stats.duplicates, "malformed": stats.malformed}})

    log.info("live: %.3g new customer journeys per second at %gx speed to %s%s; Ctrl-C stops", rate, args.speed,
             args.bootstrap_servers, f" for {args.duration:g}s" if args.duration else "")
    stats = run_live(settings_from_args(args), topics_from_args(args), rate, args.speed, args.duration, args.seed,
                     args.out_of_order, args.duplicates, args.malformed, should_stop=lambda: stopper.stopping,
                     progress=None if args.quiet else report)
    log.info("live: stopped after %.0fs: %d customers, %d messages (%d events, %d duplicates, %d malformed, %d delivered late)",
             stats.seconds, stats.customers, stats.messages, stats.events, stats.duplicates, stats.malformed, stats.late,
             extra={"fields": {"customers": stats.customers, "messages": stats.messages, "events": stats.events,
                               "duplicates": stats.duplicates, "malformed": stats.malformed, "late": stats.late}})
    return stats.messages


def main(args: argparse.Namespace, extra: Sequence[str]) -> int:
    if args.live:
        if args.customers is not None or args.start != _start(DEFAULT_START):
            log.error("--live makes customers arrive at --rate from now on: --customers and --start do not apply")
            return 2
        if args.rate is not None and args.rate <= 0 or args.speed <= 0:
            log.error("--rate and --speed must be positive")
            return 2
    elif args.duration is not None or args.speed != 1.0:
        log.error("--duration and --speed apply to --live only")
        return 2
    try:
        if args.live:
            live(args)
            return 0
        simulate(args)
    except Exception as exc:  # the producer's errors are user-facing here: broker down, auth, ...
        log.error("simulate failed: %s", exc)
        return 3
    return 0
