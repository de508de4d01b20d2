"""The streaming job's graph: Kafka -> parse (dead letters) -> per-customer state -> DuckLake.

    ReadKafka (splittable DoFn, one restriction per partition)
      -> Parse (ParseAndValidate; tag dead_letters)
      -> Assemble (PerCustomer: state + event-time cleanup timer; tag late_repair)
      -> Store (LandInStore: one idempotent transaction per bundle)

`build_from_records` starts from SourceRecords, so tests feed it a TestStream and the job feeds it
the Kafka reader; everything after the source is the same code.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import apache_beam as beam

from pipelines.kafka.settings import KafkaSettings
from pipelines.streaming.kafka_source import PartitionSpec, ReadKafkaPartitions, SourceOptions
from pipelines.streaming.sink import DEAD, UPDATE, WriteToLake
from transforms.customer_stream import DEAD_LETTERS, LATE_REPAIR, AssembleCustomerJourneys, ParseRecords
from transforms.journeys import DEFAULT_REPEAT_WINDOW_S
from transforms.metrics_config import MetricsConfig
from transforms.parse import ParseLimits


@dataclass(frozen=True)
class StreamConfig:
    topics: dict[str, str]  # stream (tickets/chats/surveys) -> topic
    catalog: str  # DuckLake catalog: sqlite:/path/catalog.sqlite | postgres:... | a SQLite path
    data_path: str  # where DuckLake writes Parquet (shared by every worker)
    settings: KafkaSettings = field(default_factory=KafkaSettings)
    repeat_window_s: float = DEFAULT_REPEAT_WINDOW_S
    allowed_lateness_s: float = 86_400.0
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    limits: ParseLimits = field(default_factory=ParseLimits)
    timestamp_policy: str = "record"
    max_out_of_orderness_s: float = 0.0
    idle_after_s: float = 5.0
    poll_interval_s: float = 0.5
    read_timeout_s: float = 60.0
    store_shards: int = 2  # concurrent store writers
    store_batch: int = 500  # updates per store transaction at most

    @property
    def stream_of_topic(self) -> dict[str, str]:
        return {topic: stream for stream, topic in self.topics.items()}

    def source_options(self) -> SourceOptions:
        return SourceOptions(self.settings, self.timestamp_policy, self.max_out_of_orderness_s,
                             self.idle_after_s, self.poll_interval_s, self.read_timeout_s)


def build_from_records(records: beam.PCollection, config: StreamConfig) -> beam.pvalue.DoOutputsTuple:
    """The graph after the source; returns the per-customer stage's outputs (updates, late_repair)."""
    parsed = records | "Parse" >> ParseRecords(config.stream_of_topic, config.limits)
    assembled = parsed["events"] | "Assemble" >> AssembleCustomerJourneys(
        config.repeat_window_s, config.allowed_lateness_s, config.metrics)
    tagged = (
        assembled["updates"] | "TagUpdates" >> beam.Map(lambda u: (UPDATE, u)),
        assembled[LATE_REPAIR] | "TagLateRepairs" >> beam.Map(lambda u: (UPDATE, u)),
        parsed[DEAD_LETTERS] | "TagDeadLetters" >> beam.Map(lambda d: (DEAD, d)),
    )
    (tagged
     | "Together" >> beam.Flatten()
     | "Store" >> WriteToLake(config.catalog, config.data_path, config.repeat_window_s, config.metrics,
                              shards=config.store_shards, batch_size=config.store_batch))
    return assembled


def build(pipeline: beam.Pipeline, config: StreamConfig, specs: list[PartitionSpec]) -> None:
    records = pipeline | "ReadKafka" >> ReadKafkaPartitions(specs, config.source_options())
    build_from_records(records, config)


def resume_offsets(config: StreamConfig) -> Optional[dict[tuple[str, int], int]]:
    """Where `--start-from store` resumes: the first offset per partition not in the store."""
    from pipelines.streaming.lake_store import LakeStore

    with LakeStore(config.catalog, config.data_path, config.repeat_window_s, config.metrics) as store:
        return store.resume_offsets()
