"""The Beam side of the store: batches customer updates, late repairs and dead letters, and
lands each batch in one idempotent store transaction.

Why batches: a DuckLake commit costs ~0.1 s per statement on this machine whatever its size,
so one transaction per customer update would cap the job at a few updates per second. Elements
are spread over `shards` keys (a stable hash of the customer or of the dead letter's
coordinates) and grouped with Beam's GroupIntoBatches (at most `batch_size` elements, at most
`max_buffering_s` of processing time). The number of shards bounds the concurrent writers.

A batch is landed before the runner commits the bundle that consumed it; if the worker dies
first, the runner replays the batch and the idempotent write (lake_store.py) makes the replay a
no-op. See docs/streaming.md, "Exactly-once".
"""
from __future__ import annotations

import logging
import threading
import zlib
from typing import Any, Iterable, Iterator

import apache_beam as beam
from apache_beam.metrics import Metrics

from pipelines.streaming.lake_store import LakeStore
from transforms.metrics_config import MetricsConfig

log = logging.getLogger("cxj.stream.sink")

UPDATE = "update"
DEAD = "dead"


def shard_of(element: tuple[str, dict], shards: int) -> int:
    kind, row = element
    key = row["customer_id"] if kind == UPDATE else f"{row['topic']}:{row['partition']}:{row['offset']}"
    return zlib.crc32(key.encode("utf-8")) % shards


_STORES: dict[tuple[str, str], tuple[LakeStore, threading.Lock]] = {}
_STORES_LOCK = threading.Lock()


def shared_store(catalog: str, data_path: str, repeat_window_s: float, config: MetricsConfig) -> tuple[LakeStore, threading.Lock]:
    """One open store per worker process, shared by every DoFn instance and thread in it.

    Why: runners create DoFn instances freely (Beam's old DirectRunner even calls setup and
    teardown around every bundle), and opening a store costs a DuckDB instance, two extension
    loads and a catalog attach (1-2 s here); concurrent extension loads in one process also hung.
    The lock serializes this process's transactions on its one connection."""
    key = (catalog, data_path)
    with _STORES_LOCK:
        if key not in _STORES:
            _STORES[key] = (LakeStore(catalog, data_path, repeat_window_s, config).open(), threading.Lock())
        return _STORES[key]


class _LandBatches(beam.DoFn):
    def __init__(self, catalog: str, data_path: str, repeat_window_s: float, config: MetricsConfig) -> None:
        self.catalog = catalog
        self.data_path = data_path
        self.repeat_window_s = repeat_window_s
        self.config = config
        self.landed_customers = Metrics.counter("cxj_stream", "customers_landed")
        self.repaired = Metrics.counter("cxj_stream", "customers_repaired")
        self.transactions = Metrics.counter("cxj_stream", "store_transactions")
        self.retries = Metrics.counter("cxj_stream", "store_retries")
        self.millis = Metrics.distribution("cxj_stream", "store_transaction_ms")

    def process(self, batch: tuple[int, Iterable[tuple[str, dict]]]) -> Iterator[Any]:
        updates: list[dict] = []
        dead: list[dict] = []
        for kind, row in batch[1]:
            (updates if kind == UPDATE else dead).append(row)
        store, lock = shared_store(self.catalog, self.data_path, self.repeat_window_s, self.config)
        with lock:
            result = store.land(updates, dead)
        self.transactions.inc()
        self.retries.inc(max(0, result.attempts - 1))
        self.landed_customers.inc(result.customers)
        self.repaired.inc(result.repaired)
        self.millis.update(int(result.seconds * 1000))
        yield result.journeys


class WriteToLake(beam.PTransform):
    """(kind, row) elements -> the DuckLake store; kind is `update` (a CustomerUpdate or a late
    record to repair) or `dead` (a dead letter). Outputs the journeys written per batch."""

    def __init__(self, catalog: str, data_path: str, repeat_window_s: float, config: MetricsConfig = MetricsConfig(),
                 shards: int = 2, batch_size: int = 500, max_buffering_s: float = 2.0) -> None:
        super().__init__()
        self.args = (catalog, data_path, repeat_window_s, config)
        self.shards = shards
        self.batch_size = batch_size
        self.max_buffering_s = max_buffering_s

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        shards = self.shards
        return (rows
                | "Shard" >> beam.Map(lambda e: (shard_of(e, shards), e)).with_output_types(
                    beam.typehints.Tuple[int, beam.typehints.Any])
                | "Batch" >> beam.GroupIntoBatches(self.batch_size, max_buffering_duration_secs=self.max_buffering_s)
                | "LandInStore" >> beam.ParDo(_LandBatches(*self.args)))
