"""`cxj`: one command for the broker, the simulator, the pipeline and the analyst tools.

Each subcommand lives in its own module; this file only wires them into argparse, so
`cxj --help` stays fast (Beam is imported only by commands that run it).
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from typing import Optional, Sequence

# subcommand -> (module, one-line help). Each module has add_arguments(parser) and main(args, extra).
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("pipelines.cmd_demo", "start the local broker, simulate customers, land journeys, print a summary"),
    "run": ("pipelines.cmd_run", "run the journey pipeline (micro-batches from Kafka into DuckDB)"),
    "simulate": ("pipelines.cmd_simulate", "send realistic simulated contract events to Kafka"),
    "broker": ("pipelines.cmd_broker", "start/stop/inspect the local Kafka-compatible broker (Tansu)"),
    "produce": ("pipelines.cmd_produce", "replay a JSONL(.gz) export of contract events into Kafka (backfill)"),
    "sql": ("pipelines.cmd_sql", "query the journey tables and marts (also while the pipeline runs)"),
    "report": ("pipelines.cmd_report", "write a self-contained HTML report of charts (journeys, friction, backlog, pipeline health)"),
    "check": ("pipelines.cmd_check", "run the data-quality suite over the landed tables"),
    "status": ("pipelines.cmd_status", "offsets, lag and freshness for ops; exit codes for alerting"),
}

EPILOG = """examples:
  cxj demo                              # everything on embedded defaults
  cxj broker start                      # local broker on 127.0.0.1:9092
  cxj simulate --customers 1000 --seed 7
  cxj run --once --db data/journeys.duckdb
  cxj run --follow --bootstrap-servers kafka-1:9092,kafka-2:9092
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cxj",
        description="CX Journeys: customer journeys from ticket, chat and survey events (Kafka -> Beam -> DuckDB).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        if importlib.util.find_spec(module_name) is None:
            continue  # a command whose module is not part of this installation
        module = importlib.import_module(module_name)
        child = sub.add_parser(name, help=help_text, description=module.__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
        child.add_argument("--quiet", action="store_true", help="only warnings and errors")
        child.add_argument("--log-format", choices=["text", "json"], default="text", help="log line format (default text)")
        child.add_argument("--verbose", action="store_true", help="also show Beam and Kafka client logs")
        module.add_arguments(child)
        child.set_defaults(handler=module.main, allows_extra=getattr(module, "ALLOWS_EXTRA", False))
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    from pipelines import logs

    logs.quiet_known_noise()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if extra and not args.allows_extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logs.configure(args.quiet, args.log_format, args.verbose)
    try:
        return int(args.handler(args, extra) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
