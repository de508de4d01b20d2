"""Query the journey tables and analyst marts with SQL — also while `cxj run --follow` writes.

  cxj sql "SELECT * FROM mart_daily_kpis ORDER BY day DESC LIMIT 20"
  cxj sql --format csv "FROM journeys WHERE status = 'open'" > open.csv
  cxj sql --format json "FROM mart_channel_paths ORDER BY journeys DESC LIMIT 5"
  cxj sql --format parquet --output kpis.parquet "FROM mart_daily_kpis"
  echo "FROM mart_open_backlog" | cxj sql
  cxj sql                      # interactive prompt when stdin is a terminal (.help inside)

Tables: events, journeys, journey_events, dead_letters, pipeline_offsets, pipeline_batches.
Views: stg_*, core_* and the marts mart_daily_kpis, mart_channel_paths, mart_handoff_pingpong,
mart_open_backlog, mart_csat_by_friction (docs/marts.md).

When the pipeline is not running this reads the --db file itself; while it runs, the read
replica it publishes after every batch (docs/storage.md). Either way, read-only.

Exit codes: 0 ok, 1 SQL error, 2 database problem.
"""
from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path
from typing import Optional, Sequence, TextIO

log = logging.getLogger("cxj.sql")

FORMATS = ("table", "csv", "json", "parquet")
EXIT_OK, EXIT_SQL, EXIT_STORE = 0, 1, 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("query", nargs="?", help="SQL to run; omitted: read it from stdin, or start a prompt on a terminal")
    parser.add_argument("--db", type=Path, default=Path("data/journeys.duckdb"), help="database file (default %(default)s)")
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format (default table)")
    parser.add_argument("--output", "-o", type=Path, metavar="FILE", help="write the result to FILE (required for parquet)")
    parser.add_argument("--max-rows", type=int, default=100, metavar="N",
                        help="table format: rows shown at most (default %(default)s; 0 = all)")


def main(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from pipelines.reader import open_reader
    from pipelines.store import StoreError

    if args.format == "parquet" and args.output is None:
        log.error("--format parquet needs --output FILE")
        return EXIT_SQL
    query = args.query
    interactive = query is None and sys.stdin.isatty()
    if query is None and not interactive:
        query = sys.stdin.read()
        if not query.strip():
            log.error("no query given (argument or stdin)")
            return EXIT_SQL
    try:
        con, source = open_reader(args.db)
    except StoreError as exc:
        log.error("%s", exc)
        return EXIT_STORE
    try:
        if interactive:
            return repl(con, source, args)
        return run(con, query, args.format, args.output, args.max_rows)
    finally:
        con.close()


def run(con, query: str, fmt: str, output: Optional[Path], max_rows: int, out: Optional[TextIO] = None) -> int:
    """Runs ``query`` and writes its result; returns an exit code."""
    import duckdb

    try:
        relation = con.sql(query)
        if relation is None:  # a statement without a result (SET, ...)
            return EXIT_OK
        write(relation, fmt, output, max_rows, out or sys.stdout)
    except duckdb.Error as exc:
        log.error("%s", str(exc).strip())
        return EXIT_SQL
    except OSError as exc:
        log.error("cannot write %s: %s", output, exc)
        return EXIT_STORE
    return EXIT_OK


def write(relation, fmt: str, output: Optional[Path], max_rows: int, out: TextIO) -> None:
    if fmt == "parquet":
        relation.write_parquet(str(output))
        return
    if fmt == "csv" and output is not None:
        relation.write_csv(str(output), header=True)
        return
    if fmt == "table":
        text = table_text(relation, max_rows)
    else:
        frame = relation.pl()
        text = frame.write_csv() if fmt == "csv" else frame.write_json() + "\n"
    if output is not None:
        output.write_text(text)
    else:
        out.write(text)
        out.flush()


def table_text(relation, max_rows: int, con=None) -> str:
    """DuckDB's box rendering, sized to the terminal; says when rows were left out."""
    import io
    from contextlib import redirect_stdout

    import duckdb

    width = shutil.get_terminal_size((160, 40)).columns
    rows = (relation.limit(max_rows + 1) if max_rows else relation).to_arrow_table()
    more = bool(max_rows) and rows.num_rows > max_rows
    if more:
        rows = rows.slice(0, max_rows)
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        duckdb.connect().from_arrow(rows).show(max_width=width, max_rows=max(rows.num_rows, 1))
    text = buffer.getvalue()
    if more:
        text += f"(first {max_rows} rows shown; --max-rows 0 shows all)\n"
    return text


HELP = """Type SQL ending with ';' (several lines are fine). Commands:
  .tables            list tables and views
  .format FORMAT     table | csv | json (now: {fmt})
  .help              this text
  .quit              leave (or Ctrl-D)
"""


def repl(con, source: str, args: argparse.Namespace) -> int:
    from pipelines.reader import published_batch

    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        pass
    fmt = args.format if args.format != "parquet" else "table"
    if source == "replica":
        print(f"cxj sql: {args.db} is being written by the pipeline; reading its live read replica "
              f"(published through batch {published_batch(con)}; every statement sees the latest).")
    else:
        print(f"cxj sql: reading {args.db} (read-only). The pipeline cannot start while this prompt is open.")
    print("Type .help for help.")
    buffer: list[str] = []
    while True:
        try:
            line = input("cxj> " if not buffer else "...> ")
        except EOFError:
            print()
            return EXIT_OK
        except KeyboardInterrupt:
            print()
            buffer.clear()
            continue
        stripped = line.strip()
        if not buffer and stripped.startswith("."):
            command, _, rest = stripped.partition(" ")
            if command in (".quit", ".exit"):
                return EXIT_OK
            if command == ".help":
                print(HELP.format(fmt=fmt))
            elif command == ".tables":
                run(con, "SELECT table_name AS name, lower(table_type) AS kind FROM information_schema.tables "
                         "WHERE table_schema = 'main' AND table_catalog = current_database() ORDER BY 1",
                    "table", None, 0)
            elif command == ".format" and rest.strip() in ("table", "csv", "json"):
                fmt = rest.strip()
            else:
                print(f"unknown command {stripped!r}; .help lists them")
            continue
        if not stripped:
            continue
        buffer.append(line)
        if stripped.endswith(";"):
            run(con, "\n".join(buffer), fmt, None, args.max_rows)
            buffer.clear()
