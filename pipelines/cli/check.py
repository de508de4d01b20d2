"""Run the data-quality suite (great-expectations) over the landed tables.

Checks: journey_id unique and not null; time_to_resolution_s >= 0 and null exactly when the
journey is not resolved; started_at <= resolved_at; handoff_count >= 0; channel_hops below
the number of touchpoints; fcr only for one contact without reopen; csat in 1..5; nps in
0..10; events unique by event_id; every journey_events row points at a journey; and, on the
database itself (not the replica), the map from customers to their events' row blocks leads to
every event.

Prints a readable result and stores it in the table `quality_checks` of the database (when
the pipeline is not holding it). Exit codes: 0 all met, 1 some failed, 2 database problem.
`cxj run --check` runs the same suite after every batch.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Sequence

from pipelines.config.paths import DEFAULT_DB

log = logging.getLogger("cxj.check")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", type=Path, default=DEFAULT_DB, help="DuckDB file (default %(default)s)")
    parser.add_argument("--no-store", action="store_true", help="do not record the result in quality_checks")
    parser.add_argument("--json", action="store_true", help="machine-readable output: success, counts and every expectation")


def main(args: argparse.Namespace, extra: Sequence[str]) -> int:
    import duckdb

    from pipelines.ops.checks import run_suite, store_report
    from pipelines.storage.reader import open_reader
    from pipelines.storage.store import StoreError

    try:
        con, source = open_reader(args.db, one_shot=True)
    except StoreError as exc:
        if args.json:
            print(json.dumps({"success": False, "error": str(exc), "db": str(args.db)}))
        log.error("%s", exc)
        return 2
    try:
        report = run_suite(con)
    finally:
        con.close()
    if args.json:
        print(json.dumps({
            "success": report.success, "checked_at": report.checked_at.isoformat(), "db": str(args.db), "source": source,
            "total": len(report.results), "failed": len(report.failed),
            "results": [dict(r.__dict__) for r in report.results],
        }, indent=2, default=str))
    else:
        print(report.render())
    if not args.no_store and args.db.is_file():
        # Storing is a write, done after the read connection is closed and only if no pipeline
        # holds the file (never waits for it: the pipeline must not wait for `cxj check` either).
        try:
            with duckdb.connect(str(args.db)) as writer:
                store_report(writer, report)
        except duckdb.Error as exc:
            if "lock" in str(exc).lower():
                log.warning("the pipeline holds %s: result not stored (use `cxj run --check` to record checks)", args.db)
            else:
                log.warning("result not stored in %s: %s", args.db, str(exc).splitlines()[0])
    return 0 if report.success else 1
