"""Beam wrapper around journey assembly.

The store exports the touched customers' full history as files partitioned by a hash of
customer_id, so all events of a customer are in one file: each file is assembled on its own,
with no shuffle, and its journeys are staged under the same partition name (a retried
bundle rewrites its own files).
"""
from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any, Iterator

import apache_beam as beam
from apache_beam.metrics import Metrics

from transforms.events import Event
from transforms.metrics_config import MetricsConfig
from transforms.service_metrics import assemble_customer
from transforms.batch_files import (
    HANDOFF_SCHEMA,
    JOURNEY_METRICS_SCHEMA,
    JOURNEY_SCHEMA,
    LINK_SCHEMA,
    read_rows,
    write_rows,
)

Rows = list[dict[str, Any]]


def assemble_rows(rows: Rows, repeat_window_s: float, config: MetricsConfig = MetricsConfig()) -> tuple[Rows, Rows, Rows, Rows]:
    """(journey rows, event -> journey links, journey_metrics rows, journey_handoffs rows) for
    all customers present in ``rows``."""
    by_customer: dict[str, list[Event]] = {}
    for row in rows:
        by_customer.setdefault(row["customer_id"], []).append(Event.from_row(row))
    journeys: Rows = []
    links: Rows = []
    metrics: Rows = []
    handoffs: Rows = []
    for customer_id, events in by_customer.items():
        customer_journeys, customer_metrics, customer_handoffs = assemble_customer(
            customer_id, events, repeat_window_s, config)
        for journey in customer_journeys:
            for event_id in journey.pop("event_ids"):
                links.append({"event_id": event_id, "journey_id": journey["journey_id"], "customer_id": customer_id})
            journeys.append(journey)
        metrics.extend(customer_metrics)
        handoffs.extend(customer_handoffs)
    return journeys, links, metrics, handoffs


class _AssembleFile(beam.DoFn):
    def __init__(self, repeat_window_s: float, staging: str, config: MetricsConfig) -> None:
        self.repeat_window_s = repeat_window_s
        self.staging = staging
        self.config = config
        self.journeys = Metrics.counter("cxj", "journeys_assembled")

    def process(self, history_file: str) -> Iterator[int]:
        journeys, links, metrics, handoffs = assemble_rows(read_rows(history_file), self.repeat_window_s, self.config)
        name = PurePosixPath(history_file).parent.name.replace("=", "-") or "all"
        write_rows(f"{self.staging}/journeys-{name}.parquet", journeys, JOURNEY_SCHEMA)
        write_rows(f"{self.staging}/links-{name}.parquet", links, LINK_SCHEMA)
        write_rows(f"{self.staging}/jmetrics-{name}.parquet", metrics, JOURNEY_METRICS_SCHEMA)
        write_rows(f"{self.staging}/handoffs-{name}.parquet", handoffs, HANDOFF_SCHEMA)
        self.journeys.inc(len(journeys))
        yield len(journeys)


class AssembleJourneys(beam.PTransform):
    """History files (one partition of customers each) -> staged journeys, links, service metrics
    and handoffs."""

    def __init__(self, repeat_window_s: float, staging: str, config: MetricsConfig = MetricsConfig()) -> None:
        super().__init__()
        self.repeat_window_s = repeat_window_s
        self.staging = staging
        self.config = config

    def expand(self, files: beam.PCollection) -> beam.PCollection:
        return files | "AssemblePartition" >> beam.ParDo(_AssembleFile(self.repeat_window_s, self.staging, self.config))
