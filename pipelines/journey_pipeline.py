"""`cxj run`: the journey pipeline's entry point.

Known options configure the job; everything else is handed to Beam's PipelineOptions, so
any runner option works (e.g. ``--runner=PortableRunner --job_endpoint=localhost:8099``).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

from pipelines import failures
from pipelines.durations import parse_duration
from pipelines.kafka_config import add_kafka_arguments, settings_from_args, topics_from_args
from pipelines.kafka_offsets import BrokerUnavailable
from pipelines.run_config import DEFAULT_MAX_BATCH_BYTES, RunConfig, Stopper
from pipelines.store import StoreError
from transforms.parse import ParseLimits

if TYPE_CHECKING:
    from pipelines.store import Store

log = logging.getLogger("cxj.run")

DEFAULT_DB = Path("data/journeys.duckdb")

EXIT_OK = 0
EXIT_STORE = 2
EXIT_BROKER = 3
EXIT_PIPELINE = 4
EXIT_QUALITY = 5


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_true", help="land everything up to the end offsets seen at start, then exit (default)")
    mode.add_argument("--follow", action="store_true", help="keep landing new events until Ctrl-C/SIGTERM (finishes the current batch)")
    parser.add_argument("--db", type=Path, default=DEFAULT_DB, help="DuckDB file to land into (default %(default)s)")
    parser.add_argument("--max-batch-events", type=int, default=50_000, metavar="N",
                        help="records read per micro-batch at most (default %(default)s)")
    parser.add_argument("--max-batch-bytes", type=int, default=DEFAULT_MAX_BATCH_BYTES, metavar="N",
                        help="message bytes read per micro-batch at most; bounds memory (default %(default)s = 32 MiB)")
    parser.add_argument("--repeat-window", type=parse_duration, default="72h", metavar="DURATION",
                        help="a new contact within this time after a journey ended joins it (default 72h; e.g. 48h, 90m)")
    parser.add_argument("--poll-interval", type=parse_duration, default="1s", metavar="DURATION",
                        help="--follow: wait between polls when caught up (default 1s)")
    parser.add_argument("--broker-timeout", type=parse_duration, default="30s", metavar="DURATION",
                        help="--once: give up when the broker stays unreachable this long (default 30s)")
    parser.add_argument("--read-timeout", type=parse_duration, default="30s", metavar="DURATION",
                        help="fail a batch when reading its offsets stalls this long (default 30s)")
    parser.add_argument("--max-future-skew", type=parse_duration, default="1d", metavar="DURATION",
                        help="occurred_at further than this in the future is dead-lettered (default 1d)")
    parser.add_argument("--max-message-bytes", type=int, default=1_048_576, metavar="N",
                        help="larger messages are dead-lettered (default %(default)s)")
    parser.add_argument("--check", action="store_true",
                        help="run the data-quality suite after every batch; stop with exit 5 when it fails")
    parser.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                        help="serve Prometheus metrics on http://0.0.0.0:PORT/metrics (lag, freshness, counts, latency)")
    add_kafka_arguments(parser)


def config_from_args(args: argparse.Namespace, beam_args: Sequence[str]) -> RunConfig:
    return RunConfig(
        db=args.db,
        settings=settings_from_args(args),
        topics=topics_from_args(args),
        max_batch_events=args.max_batch_events,
        max_batch_bytes=args.max_batch_bytes,
        repeat_window_s=args.repeat_window,
        poll_interval_s=args.poll_interval,
        read_timeout_s=args.read_timeout,
        broker_timeout_s=args.broker_timeout,
        limits=ParseLimits(max_message_bytes=args.max_message_bytes, max_future_skew_s=int(args.max_future_skew)),
        beam_args=list(beam_args),
        metrics_port=args.metrics_port,
        check=args.check,
    )


def execute(config: RunConfig, follow: bool, listeners: Sequence[object] = ()) -> int:
    """Runs the job; returns a process exit code with a one-line reason on failure.

    ``listeners`` (pipelines.microbatch.RunListener) observe the run: embedding code and
    tests see each batch's staged output before it lands, and each landed batch."""
    from pipelines.microbatch import MicroBatchRunner  # imports Beam: only when running
    from pipelines.store import Store

    try:
        store = Store(config.db)
    except StoreError as exc:
        log.error("%s", exc)
        return EXIT_STORE
    runner = MicroBatchRunner(config, store)
    runner.listeners.extend(listeners)  # type: ignore[arg-type]
    if config.metrics_port is not None:
        from pipelines.metrics import MetricsListener

        try:
            runner.listeners.append(MetricsListener(store, config.metrics_port))
        except OSError as exc:
            log.error("cannot serve metrics on port %d: %s", config.metrics_port, exc)
            store.close()
            return EXIT_PIPELINE
    if config.check:
        from pipelines.quality import quality_listener

        runner.listeners.append(quality_listener(store))
    runner.listeners.append(_FileWatch(store))
    log.info("landing into %s from %s (%s)", config.db, ", ".join(config.topics.values()), config.settings.describe())
    try:
        if follow:
            stopper = Stopper()
            stopper.install()
            landed = runner.follow(stopper)
            store.verify_file()  # never call a run clean whose file is gone
            log.info("stopped cleanly; %d events landed in this run", landed)
        else:
            batches = runner.run_once()
            landed = sum(b.landed for b in batches)
            store.verify_file()
            log.info("caught up: %d batches, %d events landed", len(batches), landed)
    except BrokerUnavailable as exc:
        log.error("%s", exc)
        return EXIT_BROKER
    except StoreError as exc:  # before Exception, which would otherwise swallow it as exit 4
        log.error("%s", exc)
        log.debug("traceback", exc_info=True)
        return EXIT_STORE
    except Exception as exc:
        if type(exc).__name__ == "QualityGateFailed":
            log.error("%s; stopped after landing that batch", exc)
            return EXIT_QUALITY
        log.debug("traceback", exc_info=True)
        try:  # a deleted database (e.g. `rm -rf data/`) also breaks the batch's files: name the root cause
            store.verify_file()
        except StoreError as gone:
            log.error("%s", gone)
            return EXIT_STORE
        known = failures.describe(exc, config.db, config.staging_root)
        if known is not None:
            log.error("%s", known.line)
            return known.exit_code
        log.error("pipeline failed: %s: %s (the batch was not landed; run with --verbose for details)",
                  type(exc).__name__, failures.first_line(exc)[:300])
        return EXIT_PIPELINE
    finally:
        runner.close()
        store.close()
    return EXIT_OK


class _FileWatch:
    """Checks while idle that the database path still names the open file (see Store.verify_file),
    so a deleted database stops a waiting --follow run instead of after its next batch only."""

    def __init__(self, store: "Store") -> None:
        self.store = store

    def batch_landed(self, batch: object, positions: object) -> None: ...

    def idle(self, positions: object) -> None:
        self.store.verify_file()

    def failed(self, error: BaseException) -> None: ...


def run(argv: Optional[Sequence[str]] = None) -> int:
    """Beam-style entry point: parse known args, pass the rest to PipelineOptions."""
    from pipelines import logs

    parser = argparse.ArgumentParser(prog="cxj run", description=__doc__)
    add_run_arguments(parser)
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--log-format", choices=["text", "json"], default="text")
    args, beam_args = parser.parse_known_args(argv)
    logs.configure(args.quiet, args.log_format)
    return execute(config_from_args(args, beam_args), args.follow)


if __name__ == "__main__":
    sys.exit(run())
