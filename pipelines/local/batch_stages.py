"""The two bounded Beam pipelines that make up one micro-batch.

1. ingest: read the planned Kafka offset ranges (up to a byte budget), parse and validate,
   de-duplicate, and write the batch's files: events, losing copies, dead letters and read
   manifests (ReadKafka -> Parse -> Dedup -> Write*);
2. assemble: from the full event history of the customers the batch touched (exported
   partitioned by customer), assemble their journeys and write journeys, event -> journey
   links, service metrics and handoffs (HistoryFiles -> AssembleJourneys -> Write*).
Between the two, the store decides which events are new (it alone knows what has landed)
and exports the touched customers' history. Only the Write* sinks at the end write files.
The labels below are the stage names the docs use (pipelines/local/batch_stages_test.py
compares them). Unknown command-line arguments reach PipelineOptions, so any runner option
works.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import apache_beam as beam
from pipelines.kafka.read import OffsetRange, RangeReader, ReadKafkaRanges, read_range_chunks
from pipelines.kafka.settings import KafkaSettings
from pipelines.local import beam_reuse, beam_sampler
from pipelines.local.beam_reuse import reusable_options
from transforms.assemble import AssembleJourneys
from transforms.batch_files import (
    COPY_FILES,
    COPY_SCHEMA,
    DEAD_LETTER_FILES,
    DEAD_LETTER_SCHEMA,
    EVENT_FILES,
    EVENT_SCHEMA,
    HANDOFF_FILES,
    HANDOFF_SCHEMA,
    JOURNEY_FILES,
    JOURNEY_METRICS_FILES,
    JOURNEY_METRICS_SCHEMA,
    JOURNEY_SCHEMA,
    LINK_FILES,
    LINK_SCHEMA,
    WriteBatchFiles,
    WriteManifests,
)
from transforms.ingest import DedupEvents, ParseEvents
from transforms.metrics_config import MetricsConfig
from transforms.parse import ParseLimits


@dataclass
class StageResult:
    seconds: float
    counters: dict[str, int]


# Beam's DoFn signature inspection, done once per function instead of on every construction
# (pipelines/local/beam_reuse.py). The runner is ours unless named (reusable_options): the
# in-process FnApiRunner, because the plain DirectRunner first tries Prism, which downloads a
# binary at run time (docs/architecture.md, D1).
beam_reuse.install()
# Bundles end without waiting up to 200 ms for Beam's state-sampler thread to wake up
# (pipelines/local/beam_sampler.py).
beam_sampler.install()


def _counters(result: beam.runners.runner.PipelineResult) -> dict[str, int]:
    counters: dict[str, int] = {}
    try:
        query = result.metrics().query()
    except Exception:  # some runners do not report metrics; counts are then taken from files
        return counters
    for counter in query["counters"]:
        key = f"{counter.key.metric.namespace}:{counter.key.metric.name}"
        value = counter.committed if counter.committed is not None else counter.attempted
        counters[key] = counters.get(key, 0) + int(value or 0)
    return counters


def build_ingest(
    pipeline: beam.Pipeline,
    ranges: list[OffsetRange],
    settings: KafkaSettings,
    stream_of_topic: dict[str, str],
    now_us: int,
    staging: str,
    limits: ParseLimits = ParseLimits(),
    read_timeout_s: float = 30.0,
    read_tasks: int = 1,
    budget_bytes: Optional[int] = None,
    reader: RangeReader = read_range_chunks,
) -> None:
    """Read, parse, de-duplicate; then one sink per output."""
    read = pipeline | "ReadKafka" >> ReadKafkaRanges(
        ranges, settings, read_timeout_s, tasks=read_tasks, budget_bytes=budget_bytes, reader=reader)
    parsed = read.records | "Parse" >> ParseEvents(stream_of_topic, now_us, limits)
    deduped = parsed.events | "Dedup" >> DedupEvents()
    _ = deduped.winners | "WriteEvents" >> WriteBatchFiles(staging, EVENT_FILES, EVENT_SCHEMA)
    _ = deduped.losing_copies | "WriteLosingCopies" >> WriteBatchFiles(staging, COPY_FILES, COPY_SCHEMA)
    _ = parsed.dead_letters | "WriteDeadLetters" >> WriteBatchFiles(staging, DEAD_LETTER_FILES, DEAD_LETTER_SCHEMA)
    _ = read.manifests | "WriteReadManifests" >> WriteManifests(staging)


def build_assemble(
    pipeline: beam.Pipeline, history_files: list[str], staging: str, repeat_window_s: float,
    metrics: MetricsConfig = MetricsConfig(),
) -> None:
    """Assemble each history partition; then one sink per output."""
    files = pipeline | "HistoryFiles" >> beam.Create(history_files)
    assembled = files | "AssembleJourneys" >> AssembleJourneys(repeat_window_s, metrics)
    _ = assembled.journeys | "WriteJourneys" >> WriteBatchFiles(staging, JOURNEY_FILES, JOURNEY_SCHEMA)
    _ = assembled.links | "WriteLinks" >> WriteBatchFiles(staging, LINK_FILES, LINK_SCHEMA)
    _ = assembled.journey_metrics | "WriteJourneyMetrics" >> WriteBatchFiles(staging, JOURNEY_METRICS_FILES, JOURNEY_METRICS_SCHEMA)
    _ = assembled.handoffs | "WriteHandoffs" >> WriteBatchFiles(staging, HANDOFF_FILES, HANDOFF_SCHEMA)


def run_ingest(
    ranges: list[OffsetRange],
    settings: KafkaSettings,
    stream_of_topic: dict[str, str],
    now_us: int,
    staging: Path,
    beam_args: Sequence[str] = (),
    limits: ParseLimits = ParseLimits(),
    read_timeout_s: float = 30.0,
    read_tasks: int = 1,
    budget_bytes: Optional[int] = None,
) -> StageResult:
    """Writes events, losing copies and dead letters, plus one read manifest per read task
    saying which offsets were really covered (the reader stops early at ``budget_bytes``)."""
    started = time.perf_counter()
    pipeline = beam.Pipeline(options=reusable_options(beam_args))
    build_ingest(pipeline, ranges, settings, stream_of_topic, now_us, str(staging), limits, read_timeout_s,
                 read_tasks, budget_bytes)
    result = pipeline.run()
    result.wait_until_finish()
    return StageResult(time.perf_counter() - started, _counters(result))


def run_assemble(
    history_files: list[str], staging: Path, repeat_window_s: float, beam_args: Sequence[str] = (),
    metrics: MetricsConfig = MetricsConfig(),
) -> StageResult:
    started = time.perf_counter()
    pipeline = beam.Pipeline(options=reusable_options(beam_args))
    build_assemble(pipeline, history_files, str(staging), repeat_window_s, metrics)
    result = pipeline.run()
    result.wait_until_finish()
    return StageResult(time.perf_counter() - started, _counters(result))
