"""Is journey data fresh? Offsets, lag and freshness for ops, with alert-ready exit codes.

Shows per topic and partition the landed offset, the broker's end offset and the lag;
event-time freshness (now - newest landed occurred_at); processing freshness (now - last
landed batch); the last batch's size and duration; dead letters in the last hour by reason.
Works while the pipeline runs (it reads the read replica then).

Exit codes (for cron, Nagios-style checks and alerting):
  0 OK    all thresholds met
  1 WARN  past half of a threshold
  2 CRIT  past a threshold, the broker is unreachable, or the database cannot be read

  --max-lag N            messages waiting in Kafka, summed over partitions
  --max-staleness S      seconds since the last landed batch while messages are waiting
                         (0 when caught up: an idle pipeline with nothing to land is not stale)
  --max-dead-letter-rate F
                         share of consumed records dead-lettered by the batches of the last hour
                         (the last 10 batches when none landed in the hour); default 0.1,
                         CRIT above it, WARN above half; 1 turns it off

Examples:
  cxj status
  cxj status --json --max-lag 50000 --max-staleness 300
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Sequence

from pipelines.config.durations import parse_duration
from pipelines.config.lake_options import add_lake_arguments
from pipelines.config.paths import DEFAULT_DB
from pipelines.kafka.settings import add_kafka_arguments, settings_from_args, topics_from_args
from pipelines.ops.status import DEFAULT_MAX_DEAD_LETTER_RATE

log = logging.getLogger("cxj.status")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", type=Path, default=DEFAULT_DB, help="DuckDB file (default %(default)s)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--max-lag", type=int, default=None, metavar="N", help="CRIT above N waiting messages, WARN above N/2")
    parser.add_argument("--max-staleness", type=parse_duration, default=None, metavar="SECONDS",
                        help="CRIT when messages wait and the last batch is older than this, WARN past half")
    parser.add_argument("--max-dead-letter-rate", type=_rate, default=DEFAULT_MAX_DEAD_LETTER_RATE, metavar="FRACTION",
                        help="CRIT when more than this share of the recent records went to dead letters, WARN past half "
                             "(default %(default)s)")
    add_lake_arguments(parser, writer=False)
    add_kafka_arguments(parser)


def _rate(text: str) -> float:
    try:
        value = float(text.rstrip("%")) / (100 if text.endswith("%") else 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction such as 0.05 or 5%") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not between 0 and 1")
    return value


def main(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from pipelines.ops.status import CRIT, collect, render
    from pipelines.storage.store import StoreError

    try:
        report = collect(args.db, settings_from_args(args), list(topics_from_args(args).values()),
                         args.max_lag, args.max_staleness, max_dead_letter_rate=args.max_dead_letter_rate,
                         lake=args.lake)
    except StoreError as exc:
        if args.json:
            print(json.dumps({"level": CRIT, "level_name": "CRIT", "reasons": [str(exc)]}))
        else:
            print(f"CRIT  {exc}")
        return CRIT
    print(json.dumps(report.to_dict(), indent=2, default=str) if args.json else render(report))
    return report.level
