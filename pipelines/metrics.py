"""Prometheus metrics for `cxj run --follow --metrics-port P`.

A RunListener: after every landed batch (and every idle poll) it updates gauges, counters
and histograms from the batch's facts and the rows it landed, and serves them over HTTP
with prometheus-client. Its own registry keeps it independent of anything else in the
process.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Optional

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from pipelines.microbatch import Positions, RunListener
from pipelines.store import LandedBatch, Store

log = logging.getLogger("cxj.metrics")

LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, float("inf"))
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, float("inf"))


class MetricsListener(RunListener):
    def __init__(self, store: Store, port: Optional[int] = None, host: str = "0.0.0.0") -> None:
        self.store = store
        self.registry = CollectorRegistry()
        r = self.registry
        self.lag = Gauge("cxj_partition_lag_messages", "Messages in Kafka not landed yet", ["topic", "partition"], registry=r)
        self.lag_total = Gauge("cxj_lag_messages", "Messages in Kafka not landed yet, all partitions", registry=r)
        self.landed_offset = Gauge("cxj_landed_offset", "Next offset to land", ["topic", "partition"], registry=r)
        self.end_offset = Gauge("cxj_end_offset", "Broker end offset when last seen", ["topic", "partition"], registry=r)
        self.events = Counter("cxj_events_landed", "Events landed", ["event_type"], registry=r)
        self.duplicates = Counter("cxj_duplicates", "Re-delivered events dropped", registry=r)
        self.dead = Counter("cxj_dead_letters", "Messages sent to the dead-letter table", ["reason"], registry=r)
        self.consumed = Counter("cxj_records_consumed", "Kafka records read", registry=r)
        self.batches = Counter("cxj_batches", "Batches landed", registry=r)
        self.journeys = Counter("cxj_journeys_written", "Journey rows written (recomputed)", registry=r)
        self.batch_duration = Histogram("cxj_batch_duration_seconds", "Batch duration, plan to commit",
                                        buckets=DURATION_BUCKETS, registry=r)
        self.latency = Histogram("cxj_end_to_end_latency_seconds",
                                 "Landed time minus the Kafka record timestamp, per landed event",
                                 buckets=LATENCY_BUCKETS, registry=r)
        self._newest_event: Optional[float] = None
        self._last_batch: Optional[float] = None
        Gauge("cxj_event_freshness_seconds", "Now minus the newest landed occurred_at", registry=r).set_function(
            lambda: time.time() - self._newest_event if self._newest_event is not None else float("nan"))
        Gauge("cxj_processing_freshness_seconds", "Now minus the end of the last landed batch", registry=r).set_function(
            lambda: time.time() - self._last_batch if self._last_batch is not None else float("nan"))
        self._load_history()
        if port is not None:
            start_http_server(port, addr=host, registry=self.registry)
            log.info("serving Prometheus metrics on http://%s:%d/metrics", host, port)

    def _load_history(self) -> None:
        newest, last = self.store.con.execute(
            "SELECT epoch((SELECT max(occurred_at) FROM events)), epoch((SELECT max(finished_at) FROM pipeline_batches))"
        ).fetchone()
        self._newest_event, self._last_batch = newest, last

    def _positions(self, positions: Positions) -> None:
        for (topic, partition), end in positions.ends.items():
            landed = positions.landed.get((topic, partition), 0)
            labels = (topic, str(partition))
            self.lag.labels(*labels).set(max(0, end - landed))
            self.landed_offset.labels(*labels).set(landed)
            self.end_offset.labels(*labels).set(end)
        self.lag_total.set(positions.lag)

    def idle(self, positions: Positions) -> None:
        self._positions(positions)

    def batch_landed(self, batch: LandedBatch, positions: Positions) -> None:
        self._positions(positions)
        self.batches.inc()
        self.consumed.inc(batch.consumed)
        self.duplicates.inc(batch.duplicates)
        self.journeys.inc(batch.journeys_written)
        self.batch_duration.observe(batch.duration_s)
        con = self.store.con
        for event_type, n in con.execute(
            "SELECT event_type, count(*) FROM events WHERE batch_id = ? GROUP BY 1", [batch.batch_id]
        ).fetchall():
            self.events.labels(event_type).inc(n)
        for reason, n in con.execute(
            "SELECT reason, count(*) FROM dead_letters WHERE batch_id = ? GROUP BY 1", [batch.batch_id]
        ).fetchall():
            self.dead.labels(reason).inc(n)
        latencies: list[Any] = con.execute(
            "SELECT epoch(landed_at) - epoch(kafka_timestamp) FROM events WHERE batch_id = ? AND kafka_timestamp IS NOT NULL",
            [batch.batch_id],
        ).fetchall()
        for (seconds,) in latencies:
            self.latency.observe(max(0.0, seconds))
        self._load_history()
