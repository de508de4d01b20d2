"""Query the journey tables and analyst marts with SQL — also while `cxj run --follow` writes.

  cxj sql "SELECT * FROM mart_daily_kpis ORDER BY day DESC LIMIT 20"
  cxj sql --format csv "FROM journeys WHERE status = 'open'" > open.csv
  cxj sql --format json "FROM mart_channel_paths ORDER BY journeys DESC LIMIT 5"
  cxj sql --format parquet --output kpis.parquet "FROM mart_daily_kpis"
  cxj sql "SELECT count(*) FROM journeys; SELECT count(*) FROM dead_letters"   # both results
  echo "FROM mart_open_backlog" | cxj sql
  cxj sql < script.sql         # SQL and dot-commands (.mode csv, .output f.csv, ...) from a file
  cxj sql                      # interactive prompt when stdin is a terminal (.help inside)

Formats: table (default; floats rounded for reading), csv, json, jsonl, markdown, line, parquet.
Every format takes every column type (lists, structs, maps, timestamps, NULLs, unicode) and is
the same on stdout and in --output FILE; a failed query leaves no file behind.

Tables: events, journeys, journey_events, dead_letters, pipeline_offsets, pipeline_batches.
Views: stg_*, core_*, v_freshness and the marts mart_daily_kpis, mart_channel_paths,
mart_handoff_pingpong, mart_open_backlog, mart_csat_by_friction (docs/marts.md).

Reads the read replica the pipeline publishes after every batch (at most every 30 s while it
reads a backlog; docs/storage.md), running or
not, so it never keeps the pipeline from starting; a database without a replica is read
directly, for one-shot queries only. Only queries run, and no other file is read unless
--allow-read names its folder (docs/security.md "Readers cannot write").

Exit codes: 0 ok, 1 SQL error or a refused statement (readers cannot write), 2 database problem or
output not writable.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

from pipelines.cli.sql_output import FORMATS, OutputError, Sink
from pipelines.config.lake_options import add_lake_arguments
from pipelines.config.paths import DEFAULT_DB

log = logging.getLogger("cxj.sql")

EXIT_OK, EXIT_SQL, EXIT_STORE = 0, 1, 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("query", nargs="?", help="SQL to run (several statements allowed); omitted: read stdin, or a prompt on a terminal")
    parser.add_argument("--db", type=Path, default=DEFAULT_DB, help="database file (default %(default)s)")
    parser.add_argument("--format", "--mode", dest="format", choices=FORMATS, default="table", help="output format (default table)")
    parser.add_argument("--output", "-o", type=Path, metavar="FILE", help="write the results to FILE instead of stdout")
    parser.add_argument("--max-rows", type=int, default=100, metavar="N",
                        help="table format: rows shown at most (default %(default)s; 0 = all)")
    parser.add_argument("--allow-read", type=Path, action="append", default=[], metavar="DIR",
                        help="also let the query read files under DIR, read-only (repeatable; env CXJ_SQL_ALLOW_READ); "
                             "off by default: queries read only the journey data (docs/security.md)")
    add_lake_arguments(parser, writer=False)


def main(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from pipelines.storage.reader import open_reader
    from pipelines.storage.store import StoreError

    query = args.query
    interactive = query is None and sys.stdin.isatty()
    script = None
    if query is None and not interactive:
        script = sys.stdin.read()
        if not script.strip():
            log.error("no query given (argument or stdin)")
            return EXIT_SQL
    try:
        con, source = open_reader(args.db, one_shot=not interactive, allow_read=args.allow_read,
                                  outputs=[args.output] if args.output else [], lake=args.lake)
    except StoreError as exc:
        log.error("%s", exc)
        return EXIT_STORE
    try:
        if interactive:
            return repl(con, source, args)
        return run(con, query if query is not None else script, args)  # type: ignore[arg-type]
    finally:
        con.close()


def run(con, text: str, args: argparse.Namespace) -> int:
    """A query argument or piped stdin: every statement's result or error, in order."""
    from pipelines.cli.sql_shell import Shell

    shell = Shell(con, fmt=args.format, max_rows=args.max_rows)
    try:
        sink = Sink.file(args.output) if args.output is not None else Sink.stdout(sys.stdout)
    except OutputError as exc:
        log.error("%s", exc)
        return EXIT_STORE
    try:
        if args.query is not None:
            shell.run_sql(text, sink)
            code = EXIT_SQL if shell.failed else EXIT_OK
        else:
            shell.stdout = sink.text
            code = shell.run_script(text.splitlines())
        if code == EXIT_OK:
            sink.commit()
        else:
            sink.discard()
        return code
    except OSError as exc:
        sink.discard()
        log.error("cannot write %s: %s", args.output or "stdout", exc.strerror or exc)
        return EXIT_STORE
    finally:
        shell.close()


def repl(con, source: str, args: argparse.Namespace) -> int:
    from pipelines.cli.sql_shell import Shell
    from pipelines.storage.reader import published_batch

    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        pass
    if source == "replica":
        banner = (f"cxj sql: reading the read replica of {args.db} (published through batch "
                  f"{published_batch(con)}; every statement sees the latest; never blocks the pipeline).")
    elif source == "lake":
        banner = ("cxj sql: reading the shared lake (every writer's published batches; every statement sees the "
                  "latest; never blocks a writer).")
    else:
        banner = f"cxj sql: reading {args.db} (read-only). The pipeline cannot start while this prompt is open."
    shell = Shell(con, fmt=args.format, max_rows=args.max_rows, output=args.output)
    try:
        return shell.prompt(input, banner + "\nType .help for help.")
    finally:
        shell.close()
