"""The two bounded Beam pipelines that make up one micro-batch.

1. ingest: read the planned Kafka offset ranges (up to a byte budget), parse, validate,
   de-duplicate, and stage event rows, losing copies, dead letters and read manifests
   (ReadKafka -> Parse -> Dedup);
2. assemble: from the full event history of the customers the batch touched (exported
   partitioned by customer), assemble their journeys and stage journey rows and
   event -> journey links (HistoryFiles -> AssembleJourneys).
Between the two, the store decides which events are new (it alone knows what has landed)
and exports the touched customers' history. Unknown command-line arguments reach
PipelineOptions, so any runner option works.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.kafka.settings import KafkaSettings
from transforms.assemble import AssembleJourneys
from transforms.ingest import DedupEvents, ParseEvents
from pipelines.kafka.read import OffsetRange, ReadKafkaRanges
from transforms.metrics_config import MetricsConfig
from transforms.parse import ParseLimits


@dataclass
class StageResult:
    seconds: float
    counters: dict[str, int]


# The in-process portable runner behind the DirectRunner, named directly: the plain
# DirectRunner first tries Prism, which downloads a binary at run time (DESIGN fact 1).
DEFAULT_RUNNER = "apache_beam.runners.portability.fn_api_runner.FnApiRunner"


def _options(beam_args: Sequence[str]) -> PipelineOptions:
    options = PipelineOptions(list(beam_args))
    if not any(a.startswith("--runner") for a in beam_args):
        options.view_as(beam.options.pipeline_options.StandardOptions).runner = DEFAULT_RUNNER
    return options


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
    """Stages events, losing copies and dead letters, plus one read manifest per read task
    saying which offsets were really covered (the reader stops early at ``budget_bytes``)."""
    started = time.perf_counter()
    pipeline = beam.Pipeline(options=_options(beam_args))
    records = pipeline | "ReadKafka" >> ReadKafkaRanges(
        ranges, settings, read_timeout_s, tasks=read_tasks, staging=str(staging), budget_bytes=budget_bytes
    )
    events = records | "Parse" >> ParseEvents(stream_of_topic, now_us, str(staging), limits)
    _ = events | "Dedup" >> DedupEvents(str(staging))
    result = pipeline.run()
    result.wait_until_finish()
    return StageResult(time.perf_counter() - started, _counters(result))


def run_assemble(
    history_files: list[str], staging: Path, repeat_window_s: float, beam_args: Sequence[str] = (),
    metrics: MetricsConfig = MetricsConfig(),
) -> StageResult:
    started = time.perf_counter()
    pipeline = beam.Pipeline(options=_options(beam_args))
    files = pipeline | "HistoryFiles" >> beam.Create(history_files)
    _ = files | "AssembleJourneys" >> AssembleJourneys(repeat_window_s, str(staging), metrics)
    result = pipeline.run()
    result.wait_until_finish()
    return StageResult(time.perf_counter() - started, _counters(result))
