"""The whole product on embedded defaults, in one command.

Starts the local broker (if not running), simulates a few thousand customers with some
messy input (late, duplicated and malformed messages), runs the pipeline until it has
caught up, and prints a summary of the journeys it landed. Re-running it sends the
same events again: they are recognised as duplicates and nothing is counted twice.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Sequence

from pipelines.config.paths import DEFAULT_DB

log = logging.getLogger("cxj.demo")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--customers", type=int, default=3000, help="customers to simulate (default %(default)s)")
    parser.add_argument("--seed", type=int, default=42,
                        help="random seed; re-running with the same seed re-sends the same events, which land as duplicates "
                             "(default %(default)s)")
    parser.add_argument("--db", type=Path, default=DEFAULT_DB, help="DuckDB file (default %(default)s)")
    parser.add_argument("--port", type=int, default=9092, help="local broker port (default %(default)s; make demo PORT=...)")


def main(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from datetime import datetime

    import duckdb

    from pipelines.cli.simulate import DEFAULT_START, progress_printer
    from pipelines.config.run_config import RunConfig
    from pipelines.kafka.local_broker import BrokerError, start_broker
    from pipelines.kafka.settings import DEFAULT_TOPICS, KafkaSettings
    from pipelines.kafka.simulator import generate_customer_events, send_simulated, to_messages
    from pipelines.local.driver import execute
    from pipelines.ops.summary import summarize

    bootstrap = f"127.0.0.1:{args.port}"
    log.info("1/4 starting the local broker on %s", bootstrap)
    try:
        start_broker(port=args.port)
    except BrokerError as exc:
        log.error("%s", exc)
        return 3
    seed = args.seed
    log.info("2/4 simulating %d customers (seed %d) with 2%% late, 1%% duplicate, 0.5%% malformed messages",
             args.customers, seed)
    events = generate_customer_events(args.customers, seed, datetime.fromisoformat(DEFAULT_START))
    messages = to_messages(events, seed, 0.02, 0.01, 0.005)
    settings = KafkaSettings(bootstrap_servers=bootstrap)
    send_simulated(messages, settings, dict(DEFAULT_TOPICS), None, progress_printer("sending") if not args.quiet else None)
    log.info("3/4 running the pipeline until caught up (into %s)", args.db)
    code = execute(RunConfig(db=args.db, settings=settings), follow=False)
    if code != 0:
        return code
    log.info("4/4 summary")
    with duckdb.connect(str(args.db), read_only=True) as con:
        print("\n" + summarize(con, args.db))
    stop = "cxj broker stop" + ("" if args.port == 9092 else f" --port {args.port}")
    print(f"\nThe local broker keeps running on {bootstrap} (memory only); stop it with: .venv/bin/{stop}")
    print(f"Watch it live: .venv/bin/cxj simulate --live --rate 20 --bootstrap-servers {bootstrap} & "
          f".venv/bin/cxj run --follow --metrics-port 9464 --db {args.db} --bootstrap-servers {bootstrap}")
    return 0
