"""`cxj`: one command for the broker, the simulator, the pipeline and the analyst tools.

Each subcommand lives in its own module; this file wires them into argparse, so `cxj --help`
stays fast (Beam is imported only by commands that run it), and makes the command line strict:

* unknown options are errors with a "did you mean" hint (abbreviations are off, so `--fol`
  does not silently mean `--follow`); `cxj run` passes an option on to Apache Beam only when
  Beam knows it;
* every option also comes from a `CXJ_...` variable or the config file (pipelines/config/layers.py);
* relative paths are made absolute once, so every message names the real file;
* output into a closed pipe (`cxj status | head -3`) ends quietly.

Exit codes: 0 ok, 1 check/WARN, 2 usage error or database problem, 3 broker unreachable,
4 pipeline failure, 5 data-quality failed; 141 when the reader of the output went away.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

# subcommand -> (module, one-line help). Each module has add_arguments(parser) and main(args, extra).
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("pipelines.cli.demo", "start the local broker, simulate customers, land journeys, print a summary"),
    "run": ("pipelines.cli.run", "run the journey pipeline (micro-batches from Kafka into DuckDB)"),
    "stream": ("pipelines.cli.stream", "run the streaming job on a distributed runner (Kafka -> per-customer state -> DuckLake)"),
    "simulate": ("pipelines.cli.simulate", "send realistic simulated contract events to Kafka (or live, at wall-clock time)"),
    "broker": ("pipelines.cli.broker", "start/stop/inspect the local Kafka-compatible broker (Tansu)"),
    "produce": ("pipelines.cli.produce", "replay a JSONL(.gz) export of contract events into Kafka (backfill)"),
    "sql": ("pipelines.cli.sql", "query the journey tables and marts (also while the pipeline runs)"),
    "report": ("pipelines.cli.report", "write a self-contained HTML report of charts (journeys, friction, backlog, pipeline health)"),
    "check": ("pipelines.cli.check", "run the data-quality suite over the landed tables"),
    "status": ("pipelines.cli.status", "offsets, lag and freshness for ops; exit codes for alerting"),
    "config": ("pipelines.cli.config", "show the effective settings of a command and where each comes from"),
}

EPILOG = """examples:
  cxj demo                              # everything on embedded defaults
  cxj broker start                      # local broker on 127.0.0.1:9092
  cxj simulate --customers 1000 --seed 7
  cxj simulate --live --rate 50         # journeys unfolding at wall-clock time
  cxj run --once --db data/journeys.duckdb
  cxj run --follow --bootstrap-servers kafka-1:9092,kafka-2:9092
  cxj config show run                   # effective settings: command line > CXJ_* > cxj.toml > default

Every option also reads a CXJ_<OPTION> variable (--max-batch-events: CXJ_MAX_BATCH_EVENTS) and
the config file (--config FILE, $CXJ_CONFIG, or ./cxj.toml).
"""

EXIT_USAGE = 2
EXIT_PIPE_CLOSED = 141  # what a shell reports for a process ended by SIGPIPE

log = logging.getLogger("cxj")


class StrictParser(argparse.ArgumentParser):
    """No abbreviations; errors are one line naming the command."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def version_text() -> str:
    from importlib import metadata

    def v(package: str) -> str:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return "?"

    return (f"cxj {v('cx-journeys')} (Apache Beam {v('apache-beam')}, kafka-python {v('kafka-python')}, "
            f"confluent-kafka {v('confluent-kafka')}, "
            f"DuckDB {v('duckdb')}, Python {sys.version.split()[0]})")


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = StrictParser(
        prog="cxj",
        description="CX Journeys: customer journeys from ticket, chat and survey events (Kafka -> Beam -> DuckDB).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=version_text())
    parser.add_argument("--config", metavar="FILE", help="config file (default $CXJ_CONFIG, else ./cxj.toml when present)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=StrictParser)
    children: dict[str, argparse.ArgumentParser] = {}
    for name, (module_name, help_text) in COMMANDS.items():
        if importlib.util.find_spec(module_name) is None:
            continue  # a command whose module is not part of this installation
        module = importlib.import_module(module_name)
        child = sub.add_parser(name, help=help_text, description=module.__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
        child.add_argument("--quiet", action="store_true", help="only warnings and errors")
        child.add_argument("--log-format", choices=["text", "json"], default="text", help="log line format (default text)")
        child.add_argument("--verbose", action="store_true", help="also show Beam and Kafka client logs")
        child.add_argument("--config", metavar="FILE", help="config file (default $CXJ_CONFIG, else ./cxj.toml when present)")
        module.add_arguments(child)
        child.set_defaults(handler=module.main, allows_extra=getattr(module, "ALLOWS_EXTRA", False),
                           job_server_checks_extra=getattr(module, "JOB_SERVER_CHECKS_EXTRA", False))
        children[name] = child
    return parser, children


def _command_of(argv: Sequence[str], commands: Sequence[str]) -> Optional[int]:
    """Index of the subcommand in argv (top-level options before it: --config FILE, --version)."""
    i = 0
    while i < len(argv):
        token = argv[i]
        if token in commands:
            return i
        if token == "--config":
            i += 2
            continue
        if not token.startswith("-"):
            return None
        i += 1
    return None


def _usage_error(prog: str, message: str) -> int:
    print(f"{prog}: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _check_extra(command: str, child: argparse.ArgumentParser, extra: list[str]) -> Optional[str]:
    """An error for options neither cxj nor (for `run`) Beam knows; None when all are fine."""
    from pipelines.config.layers import did_you_mean

    ours = sorted({s for a in child._actions for s in a.option_strings if s.startswith("--")})
    candidates = list(ours)
    unknown = list(extra)
    beam_known: list[str] = []
    if not extra:
        return None  # nothing to check: no Beam import on the way to a fast start
    if child.get_default("allows_extra"):
        from pipelines.config.beam_options import BeamOptionError, beam_option_names, check_runner, split_unknown

        # one of ours in Beam's underscore style is a typo, even where Beam has an option of that name
        for token in extra:
            name = token.split("=", 1)[0]
            if name.startswith("--") and "_" in name and name.replace("_", "-") in ours:
                return f"unknown option {name} (did you mean {name.replace('_', '-')}?)"
        try:
            _, unknown = split_unknown(extra)
            if not unknown:
                check_runner(extra)  # a wrong runner fails here, before the database is created
        except BeamOptionError as exc:
            return f"Apache Beam option: {exc}"
        beam_known = beam_option_names()
        candidates += beam_known
        if child.get_default("job_server_checks_extra") and any(t.startswith("--job_endpoint") for t in extra):
            return None  # options a job server adds (Flink's --checkpointing_interval): the command asks it
    for token in unknown:
        if token.startswith("-"):
            name = token.split("=", 1)[0]
            hint = did_you_mean(name, candidates)
            where = ": neither cxj nor Apache Beam knows it" if beam_known else ""
            return f"unknown option {name}{hint}{where}"
        return f"unexpected argument {token!r}" + (f" for `cxj {command}`" if command else "")
    return None


def _absolute_paths(args: argparse.Namespace) -> None:
    """Relative paths become absolute once, so every message names the file really meant."""
    for name, value in vars(args).items():
        if isinstance(value, Path):
            setattr(args, name, value.expanduser().absolute())


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        code = _main(argv)
        sys.stdout.flush()  # a closed pipe shows here, not as a traceback at interpreter exit
        return code
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # nothing more to write, and nothing to complain about
        return EXIT_PIPE_CLOSED


def _main(argv: list[str]) -> int:
    from pipelines.config import layers as config
    from pipelines.ops import logs

    logs.quiet_known_noise()
    parser, children = build_parser()
    at = _command_of(argv, list(children))
    if at is None:
        stray = next((t for i, t in enumerate(argv) if not t.startswith("-") and (i == 0 or argv[i - 1] != "--config")), None)
        if stray is not None:
            return _usage_error("cxj", f"unknown command {stray}{config.did_you_mean(stray, list(children))}")
        args, extra = parser.parse_known_args(argv)  # --help, --version, or a usage error
        if extra:
            token = extra[0]
            hint = config.did_you_mean(token, list(children) + ["--version", "--help", "--config"])
            return _usage_error("cxj", f"unknown {'option' if token.startswith('-') else 'command'} {token}{hint}")
        parser.print_help()
        return 0
    command = argv[at]
    child = children[command]
    try:
        path, explicit = config.find_config_file(argv, os.environ, Path.cwd())
        data = config.read_config_file(path) if path is not None else {}
        if data:
            config.check_config_keys(data, path, children)  # type: ignore[arg-type]
        config.apply_sources(child, command, argv[at + 1:], os.environ, data, path)
    except config.ConfigError as exc:
        return _usage_error(f"cxj {command}", str(exc))
    args, extra = parser.parse_known_args(argv)
    problem = _check_extra(command, child, extra)
    if problem:
        return _usage_error(f"cxj {command}", problem)
    _absolute_paths(args)
    if hasattr(args, "bootstrap_servers"):
        from pipelines.kafka.settings import SettingsProblem, settings_from_args

        try:
            settings_from_args(args).check()
        except SettingsProblem as exc:
            return _usage_error(f"cxj {command}", str(exc))
    logs.configure(args.quiet, args.log_format, args.verbose)
    for name in config.unknown_env(os.environ, children):
        log.warning("environment variable %s is not a cxj setting; ignored", name)
    if path is not None:
        log.debug("settings from %s", path)
    try:
        return int(args.handler(args, extra) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    """The `cxj` console script: the command, then a quick exit (pipelines/ops/quick_exit.py)."""
    from pipelines.ops.quick_exit import exit_quickly

    exit_quickly(main())


if __name__ == "__main__":
    entry()
