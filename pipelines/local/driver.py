"""`cxj run`: the journey pipeline's entry point.

Known options configure the job; everything else is handed to Beam's PipelineOptions, so
any runner option works (e.g. ``--runner=PortableRunner --job_endpoint=localhost:8099``).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

from pipelines.config.durations import parse_duration
from pipelines.config.lake_options import add_lake_arguments, lake_target_of
from pipelines.config.paths import DEFAULT_DB
from pipelines.config.run_config import DEFAULT_MAX_BATCH_BYTES, RunConfig, Stopper
from pipelines.kafka.offsets import BrokerUnavailable
from pipelines.kafka.settings import add_kafka_arguments, settings_from_args, topics_from_args
from pipelines.ops import failures
from pipelines.ops.startup_heap import freeze_startup_objects
from pipelines.storage.store import StoreError
from transforms.metrics_config import MetricsConfig
from transforms.parse import ParseLimits

if TYPE_CHECKING:
    from pipelines.storage.store import Store

log = logging.getLogger("cxj.run")


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
                        help="serve Prometheus metrics on http://HOST:PORT/metrics and health on /healthz")
    parser.add_argument("--metrics-host", default="127.0.0.1", metavar="HOST",
                        help="address the metrics endpoint binds (default %(default)s: this machine only; "
                             "0.0.0.0 exposes it to the network, see docs/security.md)")
    parser.add_argument("--stall-after", type=parse_duration, default="5m", metavar="DURATION",
                        help="/healthz answers 503 when the run loop has not finished a batch, poll or retry for this "
                             "long (default 5m; keep it above your longest batch)")
    parser.add_argument("--commit-group", default=None, metavar="GROUP",
                        help="also commit the landed offsets to this Kafka consumer group, so kafka-consumer-groups, "
                             "Burrow or kafka-lag-exporter see the pipeline's position (the database stays the truth)")
    parser.add_argument("--lock-timeout", type=parse_duration, default="10s", metavar="DURATION",
                        help="at start, wait this long for another process to release the database file, "
                             "then exit 2 naming it (default 10s)")
    parser.add_argument("--calendars", type=Path, default=None, metavar="FILE",
                        help="TOML file of business-hours calendars and service-metric settings "
                             "(default: Mon-Fri 09:00-17:00 UTC, durable 7 days, repeat contact 7 days)")
    add_lake_arguments(parser, writer=True)
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
        metrics_host=args.metrics_host,
        commit_group=args.commit_group,
        stall_after_s=args.stall_after,
        check=args.check,
        lock_timeout_s=float(args.lock_timeout),
        service_metrics=_service_metrics_config(getattr(args, "calendars", None)),
        lake=lake_target_of(args),
        writer_id=getattr(args, "writer_id", None),
        partitions=getattr(args, "partitions", None),
    )


def _service_metrics_config(path: Optional[Path]) -> "MetricsConfig":
    """The --calendars file; a file that cannot be used stops the run with one line (exit 4)."""
    from transforms.metrics_config import MetricsConfigError, load_metrics_config

    try:
        return load_metrics_config(path)
    except MetricsConfigError as exc:
        log.error("%s", exc)
        raise SystemExit(EXIT_PIPELINE) from None


def execute(config: RunConfig, follow: bool, listeners: Sequence[object] = ()) -> int:
    """Runs the job; returns a process exit code with a one-line reason on failure.

    ``listeners`` (pipelines.local.microbatch.RunListener) observe the run: embedding code and
    tests see each batch's staged output before it lands, and each landed batch."""
    stopper = Stopper()
    if follow:
        stopper.install()  # first: a SIGTERM while Beam and DuckDB load must stop cleanly, not kill
    from pipelines.config.beam_options import BeamOptionError, check_runner, describe_runner
    from pipelines.local.microbatch import MicroBatchRunner  # imports Beam: only when running
    from pipelines.storage.store import Store

    try:
        check_runner(config.beam_args)  # before anything is created: a wrong runner leaves no database behind
        runner_text = describe_runner(config.beam_args)
    except BeamOptionError as exc:
        log.error("%s", exc)
        return EXIT_PIPELINE
    try:
        store = Store(config.db, lock_timeout_s=config.lock_timeout_s, lake=config.lake, writer_id=config.writer_id)
    except StoreError as exc:
        log.error("%s", exc)
        return EXIT_STORE
    unselected = outside_partitions(store, config.partitions)
    if unselected:
        store.close()
        log.error("%s has landed partitions %s, which --partitions leaves out: a writer keeps its partitions "
                  "(another writer reading them would land their events twice; docs/storage.md)", config.db, unselected)
        return EXIT_PIPELINE
    runner = MicroBatchRunner(config, store)
    metrics = None
    runner.listeners.extend(listeners)  # type: ignore[arg-type]
    if config.metrics_port is not None:
        from pipelines.ops.prometheus import MetricsListener

        try:
            metrics = MetricsListener(store, config.metrics_port, config.metrics_host,
                                      settings=config.settings, topics=config.topics.values(),
                                      stall_after_s=config.stall_after_s)
        except OSError as exc:
            log.error("cannot serve metrics on port %d of %s: %s", config.metrics_port, config.metrics_host, exc.strerror or exc)
            store.close()
            return EXIT_PIPELINE
        runner.listeners.append(metrics)
    committer = None
    if config.commit_group:
        from pipelines.kafka.commit_group import GroupOffsetCommitter

        committer = GroupOffsetCommitter(config.settings, config.commit_group)
        runner.listeners.append(committer)
    if config.check:
        from pipelines.ops.checks import quality_listener

        runner.listeners.append(_quality_reported(quality_listener(store), metrics))
    runner.listeners.append(_FileWatch(store))
    log.info("landing into %s from %s (%s)", config.db, ", ".join(config.topics.values()), config.settings.describe())
    log.info("%s with Beam runner %s; at most %d records per batch, poll every %gs, repeat window %gh%s",
             "following" if follow else "running once", runner_text, config.max_batch_events, config.poll_interval_s,
             config.repeat_window_s / 3600, f", Beam options {' '.join(config.beam_args)}" if config.beam_args else "",
             extra={"fields": {"runner": runner_text, "mode": "follow" if follow else "once",
                               "max_batch_events": config.max_batch_events, "beam_args": list(config.beam_args)}})
    freeze_startup_objects()  # set up: what lives from here on is the run's (pipelines/ops/startup_heap.py)
    try:
        if follow:
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
        known = failures.describe(exc, config.db, config.batch_files_root)
        if known is not None:
            log.error("%s", known.line)
            return known.exit_code
        log.error("pipeline failed: %s: %s (the batch was not landed; run with --verbose for details)",
                  type(exc).__name__, failures.first_line(exc)[:300])
        return EXIT_PIPELINE
    finally:
        if metrics is not None:
            metrics.close()
        if committer is not None:
            committer.close()
        runner.close()
        store.close()
    return EXIT_OK


def outside_partitions(store: "Store", partitions: Optional[frozenset[int]]) -> str:
    """'topic/partition, ...' landed in ``store`` but not among ``partitions`` ('' if none)."""
    if partitions is None:
        return ""
    outside = sorted(f"{t}/{p}" for t, p in store.landed_offsets() if p not in partitions)
    return ", ".join(outside[:5]) + (f" and {len(outside) - 5} more" if len(outside) > 5 else "")


class _FileWatch:
    """Checks while idle that the database path still names the open file (see Store.verify_file),
    so a deleted database stops a waiting --follow run instead of after its next batch only."""

    def __init__(self, store: "Store") -> None:
        self.store = store

    def batch_landed(self, batch: object, positions: object) -> None: ...

    def idle(self, positions: object) -> None:
        self.store.verify_file()

    def failed(self, error: BaseException) -> None: ...


def _quality_reported(quality, metrics):  # type: ignore[no-untyped-def]
    """Runs the quality gate and, with metrics on, exports its result (pass or fail) first."""
    if metrics is None:
        return quality
    from pipelines.local.microbatch import RunListener

    class QualityWithMetrics(RunListener):
        def batch_landed(self, batch, positions):  # type: ignore[no-untyped-def]
            try:
                quality.batch_landed(batch, positions)
            finally:
                metrics.record_quality(counted=True)

    return QualityWithMetrics()

