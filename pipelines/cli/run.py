"""Run the journey pipeline: read the event topics in micro-batches (each a bounded Beam
pipeline), assemble journeys, and land them with the Kafka offsets in one DuckDB transaction.

Modes:
  --once    land everything up to the end offsets seen at start, then exit (default)
  --follow  keep going until Ctrl-C or SIGTERM, which finishes the current batch cleanly

Any option not listed here is passed to Apache Beam's PipelineOptions, e.g.
  cxj run --once --runner=PortableRunner --job_endpoint=localhost:8099

Exit codes: 0 ok, 2 database problem, 3 broker unreachable, 4 pipeline failure,
5 data-quality check failed (--check).
"""
from __future__ import annotations

import argparse
from typing import Sequence

from pipelines.local.driver import add_run_arguments, config_from_args, execute

ALLOWS_EXTRA = True  # runner options for Beam


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser)


def main(args: argparse.Namespace, extra: Sequence[str]) -> int:
    return execute(config_from_args(args, extra), follow=args.follow)
