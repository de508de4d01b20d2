"""Run the streaming job: read the event topics unbounded, keep per-customer state, and land
journeys in a DuckLake store that many readers (and, with a PostgreSQL catalog, many writers)
share. Meant for distributed runners; see docs/streaming.md.

Modes:
  (default)      unbounded: runs until cancelled (Ctrl-C / SIGTERM cancels the job)
  --stop-at-end  bounded: read up to the end offsets seen at start, land everything, exit

Runner options go to Apache Beam, e.g.
  cxj stream --runner=PortableRunner --job_endpoint=localhost:8099 \\
             --environment_type=EXTERNAL --environment_config=localhost:50000
The in-process runner (the default) runs only the bounded mode.

Exit codes: 0 ok, 2 usage error or store problem, 3 broker unreachable, 4 pipeline failure
(also: a job endpoint or worker pool that does not answer within --job-endpoint-timeout).
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Sequence

from pipelines.config.durations import parse_duration
from pipelines.kafka.settings import add_kafka_arguments, settings_from_args, topics_from_args

ALLOWS_EXTRA = True  # runner options for Beam
JOB_SERVER_CHECKS_EXTRA = True  # with --job_endpoint, options Beam does not know are checked against the job server
DEFAULT_STORE = Path("data/stream.lake/catalog.sqlite")
EXIT_STORE, EXIT_BROKER, EXIT_PIPELINE = 2, 3, 4
JOB_STREAM_DEADLINE_S = 10 * 365 * 86_400  # the job's state stream lives as long as the job

log = logging.getLogger("cxj.stream")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", default=str(DEFAULT_STORE), metavar="CATALOG",
                        help="DuckLake catalog: a SQLite file (default %(default)s), sqlite:PATH, or PostgreSQL for many writers: "
                             "postgresql://[user@]host[:port]/db or postgres:CONNINFO (no password in it: PGPASSWORD)")
    parser.add_argument("--store-data", default=None, metavar="DIR",
                        help="where the store writes Parquet; every worker must reach it (default: data/ next to a "
                             "SQLite catalog)")
    parser.add_argument("--stop-at-end", action="store_true",
                        help="bounded mode: stop at the end offsets seen at start (tests, backfills)")
    parser.add_argument("--start-from", choices=("store", "earliest", "latest"), default="store",
                        help="where each partition starts: after the offsets the store has accounted for (default), "
                             "the earliest or the latest offset")
    parser.add_argument("--timestamp-policy", choices=("record", "event"), default="record",
                        help="element timestamps and watermark from the Kafka record time (default) or the event's occurred_at")
    parser.add_argument("--max-out-of-orderness", type=parse_duration, default="0s", metavar="DURATION",
                        help="watermark = newest timestamp read minus this (default 0s)")
    parser.add_argument("--idle-after", type=parse_duration, default="5s", metavar="DURATION",
                        help="a caught-up partition without records this long advances its watermark to wall-clock time")
    parser.add_argument("--repeat-window", type=parse_duration, default="72h", metavar="DURATION",
                        help="a new contact within this time after a journey ended joins it (default 72h)")
    parser.add_argument("--allowed-lateness", type=parse_duration, default="1d", metavar="DURATION",
                        help="a customer's state is kept this long past the repeat window; later records are "
                             "repaired from the store (default 1d)")
    parser.add_argument("--store-shards", type=int, default=2, metavar="N",
                        help="concurrent store writers (batches are sharded by customer; default %(default)s)")
    parser.add_argument("--store-batch", type=int, default=500, metavar="N",
                        help="updates per store transaction at most (default %(default)s)")
    parser.add_argument("--read-timeout", type=parse_duration, default="60s", metavar="DURATION",
                        help="bounded mode: fail when a partition makes no progress this long (default 60s)")
    parser.add_argument("--job-endpoint-timeout", type=parse_duration, default="10s", metavar="DURATION",
                        help="a job endpoint or worker pool must answer within this (default 10s)")
    add_kafka_arguments(parser)


def _catalog(text: str) -> tuple[str, str]:
    """(catalog for ATTACH, absolute path of the SQLite file or ''). A PostgreSQL catalog is given as
    for `cxj run --lake` (postgresql://[user@]host[:port]/database or postgres:<libpq keywords>,
    never with a password: PGPASSWORD or ~/.pgpass), and checked the same way."""
    if text.lower().startswith(("postgres:", "postgresql:", "postgres://", "postgresql://")):
        from pipelines.storage.lake_target import parse_lake

        return "postgres:" + parse_lake(text).libpq, ""
    path = Path(text[len("sqlite:"):] if text.startswith("sqlite:") else text).expanduser().absolute()
    return f"sqlite:{path}", str(path)


def main(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from pipelines.storage.lake_target import LakeSpecError
    from pipelines.streaming.runners import EndpointUnreachable, RunnerProblem, check_endpoints, plan_runner

    try:
        catalog, sqlite_path = _catalog(args.store)
    except LakeSpecError as exc:
        print(f"cxj stream: error: {str(exc).replace('--lake', '--store')}", file=sys.stderr)
        return EXIT_STORE
    if args.store_data:
        data_path = str(Path(args.store_data).expanduser().absolute())
    elif sqlite_path:
        data_path = str(Path(sqlite_path).parent / "data")
    else:
        print("cxj stream: error: --store-data is required with a postgres: catalog", file=sys.stderr)
        return EXIT_STORE
    if args.store_shards < 1 or args.store_batch < 1:
        print("cxj stream: error: --store-shards and --store-batch must be at least 1", file=sys.stderr)
        return EXIT_STORE
    try:
        plan = plan_runner(extra, bounded=args.stop_at_end)
    except RunnerProblem as exc:
        print(f"cxj stream: error: {exc}", file=sys.stderr)
        return EXIT_STORE
    try:
        check_endpoints(plan, args.job_endpoint_timeout)
    except EndpointUnreachable as exc:
        print(f"cxj stream: error: {exc}", file=sys.stderr)
        return EXIT_PIPELINE
    except RunnerProblem as exc:  # an option the job server does not take either
        print(f"cxj stream: error: {exc}", file=sys.stderr)
        return EXIT_STORE
    return _run(args, extra, plan, catalog, data_path, sqlite_path)


def _run(args: argparse.Namespace, extra: Sequence[str], plan, catalog: str, data_path: str, sqlite_path: str) -> int:  # type: ignore[no-untyped-def]
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipelines.storage.replica import ReplicaError
    from pipelines.streaming.kafka_source import plan_partitions
    from pipelines.streaming.lake_store import LakeStore, StoreUnavailable
    from pipelines.streaming.pipeline import StreamConfig, build

    if sqlite_path:
        Path(sqlite_path).parent.mkdir(parents=True, exist_ok=True)
    config = StreamConfig(
        topics=topics_from_args(args), catalog=catalog, data_path=data_path, settings=settings_from_args(args),
        repeat_window_s=args.repeat_window, allowed_lateness_s=args.allowed_lateness,
        timestamp_policy=args.timestamp_policy, max_out_of_orderness_s=args.max_out_of_orderness,
        idle_after_s=args.idle_after, read_timeout_s=args.read_timeout, store_shards=args.store_shards,
        store_batch=args.store_batch)
    try:
        with LakeStore(catalog, data_path, config.repeat_window_s) as store:
            start = store.resume_offsets() if args.start_from == "store" else args.start_from
    except (StoreUnavailable, ReplicaError, OSError) as exc:
        print(f"cxj stream: error: store {catalog}: {str(exc).splitlines()[0]}", file=sys.stderr)
        return EXIT_STORE
    except Exception as exc:  # duckdb.Error and friends: one line
        print(f"cxj stream: error: store {catalog}: {str(exc).splitlines()[0]}", file=sys.stderr)
        return EXIT_STORE
    try:
        specs = plan_partitions(config.settings, list(config.topics.values()), start, args.stop_at_end)
    except Exception as exc:  # kafka errors: NoBrokersAvailable, KafkaTimeoutError, a missing topic
        print(f"cxj stream: error: cannot reach Kafka at {config.settings.bootstrap_servers}: {str(exc).splitlines()[0] or type(exc).__name__}", file=sys.stderr)  # noqa: E501
        return EXIT_BROKER
    to_read = sum(s.stop - s.start for s in specs) if args.stop_at_end else None
    log.info("cxj stream: runner %s, %d partitions, %s, store %s", plan.name, len(specs),
             f"bounded ({to_read} records to read)" if to_read is not None else "unbounded", catalog)
    options = ["--streaming"] if not args.stop_at_end else []
    if plan.job_endpoint and not any(a.startswith("--job_server_timeout") for a in extra):
        # Beam's PortableRunner opens the job's state and message streams with --job_server_timeout
        # (60 s) as their gRPC deadline, so any job running longer failed with "Deadline Exceeded":
        # every streaming job. The endpoint already answered (check_endpoints); wait as long as the job runs.
        options.append(f"--job_server_timeout={JOB_STREAM_DEADLINE_S}")
    if plan.in_process:
        options.append("--runner=apache_beam.runners.portability.fn_api_runner.FnApiRunner")
        extra = [a for a in extra if not a.startswith("--runner")]
    started = time.perf_counter()
    try:
        pipeline = beam.Pipeline(options=PipelineOptions(list(extra) + options))
        build(pipeline, config, specs)
        result = pipeline.run()
        try:
            result.wait_until_finish()
        except KeyboardInterrupt:
            log.warning("cancelling the job")
            result.cancel()
            raise
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        print(f"cxj stream: error: pipeline failed: {_one_line(exc)}", file=sys.stderr)
        return EXIT_PIPELINE
    seconds = time.perf_counter() - started
    with LakeStore(catalog, data_path, config.repeat_window_s) as store:
        counts = store.counts()
    print(f"cxj stream: done in {seconds:.1f}s: read {to_read if to_read is not None else '?'} records; "
          f"events {counts['events']}, duplicates {counts['event_copies']}, dead letters {counts['dead_letters']}, "
          f"journeys {counts['journeys']} in the store", flush=True)
    return 0


def _one_line(exc: BaseException) -> str:
    """The cause in one line: gRPC errors keep it in details(), Beam's in the last line."""
    details = getattr(exc, "details", None)
    text = details() if callable(details) else str(exc)
    lines = [line.strip() for line in str(text or "").strip().splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[-1][:300] if lines else '(no message)'}"
