"""Write one self-contained HTML report of charts for analysts and ops (works offline).

  cxj report                                   # report.html over all landed journeys
  cxj report -o weekly.html --days 7           # the data's last 7 days (its own clock, not today)
  cxj report --from 2026-08-01 --to 2026-08-14 --channel chat --channel email --team billing

Charts: journeys over time by channel and status, time to resolution and first response,
handoffs and channel hops, the most common channel paths, handoff ping-pong, open backlog by
age, CSAT against friction, and pipeline health (lag per batch, records per batch, dead letters).
Date, channel and team filters apply to journeys (by start day, entry channel, last team); the
pipeline-health charts take the date range only (by landing day). Reads like `cxj sql`: the
--db file, or its read replica while the pipeline runs.

Exit codes: 0 ok, 2 database problem or the file cannot be written.
"""
from __future__ import annotations

import argparse
import logging
from datetime import date
from pathlib import Path
from typing import Sequence

from pipelines.config.paths import DEFAULT_DB

log = logging.getLogger("cxj.report")
EXIT_OK, EXIT_STORE = 0, 2


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a positive number of days: {text!r}")
    return int(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", type=Path, default=DEFAULT_DB, help="database file (default %(default)s)")
    parser.add_argument("--output", "-o", type=Path, default=Path("report.html"), metavar="FILE",
                        help="HTML file to write (default %(default)s)")
    parser.add_argument("--from", dest="since", type=_day, metavar="DATE", help="first journey start day (UTC), inclusive")
    parser.add_argument("--to", dest="until", type=_day, metavar="DATE", help="last journey start day (UTC), inclusive")
    parser.add_argument("--days", type=_positive, metavar="N",
                        help="the last N days up to the data's latest start day (works on any data set)")
    parser.add_argument("--channel", action="append", default=[], metavar="CHANNEL", help="entry channel (repeatable)")
    parser.add_argument("--team", action="append", default=[], metavar="TEAM", help="team (repeatable)")


def main(args: argparse.Namespace, extra: Sequence[str]) -> int:
    import duckdb

    from pipelines.ops.report import Filters, ReportError, build, write
    from pipelines.storage.reader import open_reader, published_batch
    from pipelines.storage.store import StoreError

    filters = Filters(args.since, args.until, args.days, list(args.channel), list(args.team))
    try:
        con, _source = open_reader(args.db, one_shot=True)  # read-only, locked down; the replica when there is one
    except StoreError as exc:
        log.error("%s", exc)
        return EXIT_STORE
    try:
        batch = published_batch(con)
        label = f"{args.db}" + (f" (live read replica, batch {batch})" if batch is not None else "")
        page = build(con, filters, label)
    except duckdb.Error as exc:
        log.error("cannot read the journeys from %s: %s", args.db, str(exc).strip().splitlines()[0])
        return EXIT_STORE
    finally:
        con.close()
    try:
        write(page, args.output)
    except ReportError as exc:
        log.error("%s", exc)
        return EXIT_STORE
    log.info("wrote %s (%d KiB; %s)", args.output, len(page.encode()) // 1024, filters.describe())
    return EXIT_OK
