"""Prometheus metrics and a health endpoint for `cxj run --follow --metrics-port P`.

A RunListener: after every landed batch (and every idle poll) it updates counters and
histograms from the batch's facts and the rows it landed. Lag is different: it must be true
whenever Prometheus scrapes, also in the middle of a long batch while producers keep sending,
so it is not taken from the end offsets the batch was planned with (those are stale by the
time the batch lands; under load that made the gauge read 0 while 30k messages waited).
A background thread looks up the broker's end offsets on its own connection every
``lag_interval_s``; every scrape computes lag from the newest end offsets known (from that
thread or from the run loop, whichever looked later) and the offsets landed so far, and
exposes how old that look-up is (``cxj_end_offsets_age_seconds``), so the reported lag is
exact up to that age. A scrape never waits on the broker.

The HTTP server binds 127.0.0.1 unless ``host`` says otherwise: the figures describe the
business (volumes, failure reasons) and need not reach the network by default.
"""
from __future__ import annotations

import json
import logging
import platform
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import metadata
from typing import Any, Iterable, Iterator, Optional

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from pipelines.kafka.offsets import PartitionKey
from pipelines.kafka.settings import KafkaSettings
from pipelines.local.microbatch import Positions, RunListener
from pipelines.storage.store import LandedBatch, Store

log = logging.getLogger("cxj.metrics")

LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, float("inf"))
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, float("inf"))
DEFAULT_METRICS_HOST = "127.0.0.1"
DEFAULT_LAG_INTERVAL_S = 1.0
DEFAULT_STALL_AFTER_S = 300.0


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


class PositionBoard:
    """Landed and end offsets per partition, shared by the run loop, the look-up thread and scrapes.

    Each end offset keeps the time its look-up *started*: the broker's true end at that moment
    was at most the reported value, so ``now - looked_up_at`` bounds how stale a scrape can be.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.landed: dict[PartitionKey, int] = {}
        self.ends: dict[PartitionKey, tuple[int, float]] = {}
        self.broker_up: Optional[bool] = None
        self.broker_error: Optional[str] = None

    def set_landed(self, landed: dict[PartitionKey, int]) -> None:
        with self._lock:
            self.landed.update(landed)

    def set_ends(self, ends: dict[PartitionKey, int], looked_up_at: float) -> None:
        with self._lock:
            for key, end in ends.items():
                if key not in self.ends or self.ends[key][1] <= looked_up_at:
                    self.ends[key] = (end, looked_up_at)

    def set_broker(self, up: bool, error: Optional[str] = None) -> None:
        with self._lock:
            self.broker_up, self.broker_error = up, error

    def snapshot(self) -> tuple[dict[PartitionKey, int], dict[PartitionKey, tuple[int, float]]]:
        with self._lock:
            return dict(self.landed), dict(self.ends)

    def lag(self) -> Optional[int]:
        landed, ends = self.snapshot()
        if not ends:
            return None
        return sum(max(0, end - landed.get(k, 0)) for k, (end, _) in ends.items())


class EndOffsetWatcher(threading.Thread):
    """Looks up the broker's end offsets every interval on its own connection (never the run loop's)."""

    def __init__(self, board: PositionBoard, settings: KafkaSettings, topics: Iterable[str], interval_s: float) -> None:
        super().__init__(name="cxj-end-offsets", daemon=True)
        self.board = board
        self.settings = settings
        self.topics = list(topics)
        self.interval_s = interval_s
        self._stop_event = threading.Event()

    def run(self) -> None:
        from pipelines.kafka.offsets import BrokerUnavailable, OffsetReader

        reader: Optional[OffsetReader] = None
        while not self._stop_event.is_set():
            started = time.time()
            try:
                if reader is None:
                    reader = OffsetReader(self.settings, connect_timeout_s=max(1.0, min(5.0, 5 * self.interval_s)))
                partitions, _missing = reader.partitions(self.topics)
                _, ends = reader.bounds(partitions)
                self.board.set_ends(ends, started)
                self.board.set_broker(True)
            except BrokerUnavailable as exc:
                self.board.set_broker(False, str(exc))
                if reader is not None:
                    reader.close()
                reader = None
            except Exception as exc:  # a look-up thread must never die silently: the age gauge shows it
                self.board.set_broker(False, f"{type(exc).__name__}: {exc}")
                log.debug("end-offset look-up failed", exc_info=True)
                if reader is not None:
                    reader.close()
                reader = None
            self._stop_event.wait(max(0.0, self.interval_s - (time.time() - started)))
        if reader is not None:
            reader.close()

    def stop(self) -> None:
        self._stop_event.set()


class LagCollector(Collector):
    """Computes the offset gauges at scrape time from the position board."""

    def __init__(self, board: PositionBoard) -> None:
        self.board = board

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = time.time()
        landed, ends = self.board.snapshot()
        lag = GaugeMetricFamily("cxj_partition_lag_messages", "Messages in Kafka not landed yet (end offset minus landed offset)",
                                labels=["topic", "partition"])
        landed_g = GaugeMetricFamily("cxj_landed_offset", "Next offset to land (stored with the results)", labels=["topic", "partition"])
        end_g = GaugeMetricFamily("cxj_end_offset", "Broker end offset at the newest look-up", labels=["topic", "partition"])
        total = 0
        for key in sorted(set(landed) | set(ends)):
            labels = [key[0], str(key[1])]
            done = landed.get(key, 0)
            landed_g.add_metric(labels, done)
            if key in ends:
                end = max(ends[key][0], done)  # the true end is never below what has landed
                end_g.add_metric(labels, end)
                lag.add_metric(labels, end - done)
                total += end - done
        yield lag
        yield landed_g
        yield end_g
        yield GaugeMetricFamily("cxj_lag_messages", "Messages in Kafka not landed yet, all partitions",
                                value=float(total) if ends else float("nan"))
        oldest = min((at for _, at in ends.values()), default=None)
        yield GaugeMetricFamily("cxj_end_offsets_age_seconds",
                                "Age of the oldest end-offset look-up behind the lag figures (lag is exact up to this age)",
                                value=now - oldest if oldest is not None else float("nan"))
        up = self.board.broker_up
        yield GaugeMetricFamily("cxj_broker_up", "1 when the last end-offset look-up reached the broker, else 0",
                                value=float("nan") if up is None else float(up))


class MetricsListener(RunListener):
    """Counters and histograms per landed batch, lag at scrape time, and the HTTP endpoint."""

    def __init__(self, store: Store, port: Optional[int] = None, host: str = DEFAULT_METRICS_HOST,
                 settings: Optional[KafkaSettings] = None, topics: Iterable[str] = (),
                 lag_interval_s: float = DEFAULT_LAG_INTERVAL_S, stall_after_s: float = DEFAULT_STALL_AFTER_S) -> None:
        self.store = store
        # held while a batch's figures are applied and while a scrape is written: a scrape shows
        # every figure of a batch or none (events landed and their latencies agree)
        self.updating = threading.Lock()
        self.board = PositionBoard()
        self.board.set_landed(store.landed_offsets())
        self.stall_after_s = stall_after_s
        self.heartbeat = time.time()  # the run loop's last sign of life (batch, idle poll, broker retry)
        self.registry = CollectorRegistry()
        r = self.registry
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
        self.quality_runs = Counter("cxj_quality_check_runs", "Data-quality suite runs (cxj run --check)", ["result"], registry=r)
        self.quality_failed = Gauge("cxj_quality_checks_failed", "Expectations failed in the latest data-quality run", registry=r)
        self.quality_at = Gauge("cxj_quality_last_check_timestamp_seconds", "When the latest data-quality run finished (Unix time)",
                                registry=r)
        self.quality_failed.set(float("nan"))  # unknown until a run is recorded: not "0 failed"
        self.quality_at.set(float("nan"))
        Gauge("cxj_build_info", "Version of cxj and its main libraries (value 1)",
              ["version", "python", "beam", "kafka_python"], registry=r).labels(
            _version("cx-journeys"), platform.python_version(), _version("apache-beam"), _version("kafka-python")).set(1)
        self._newest_event: Optional[float] = None
        self._last_batch: Optional[float] = None
        Gauge("cxj_event_freshness_seconds", "Now minus the newest landed occurred_at", registry=r).set_function(
            lambda: time.time() - self._newest_event if self._newest_event is not None else float("nan"))
        Gauge("cxj_processing_freshness_seconds", "Now minus the end of the last landed batch", registry=r).set_function(
            lambda: time.time() - self._last_batch if self._last_batch is not None else float("nan"))
        Gauge("cxj_last_batch_timestamp_seconds", "When the last batch landed (Unix time)", registry=r).set_function(
            lambda: self._last_batch if self._last_batch is not None else float("nan"))
        ProcessCollector(registry=r)  # process_start_time_seconds, memory, CPU, open files
        r.register(LagCollector(self.board))
        self._newest_event, self._last_batch = self._history()
        self.record_quality()
        self.watcher: Optional[EndOffsetWatcher] = None
        if settings is not None and topics:
            self.watcher = EndOffsetWatcher(self.board, settings, topics, lag_interval_s)
            self.watcher.start()
        self.server: Optional[ThreadingHTTPServer] = None
        if port is not None:
            self.server = serve(self, host, port)
            log.info("serving Prometheus metrics on http://%s:%d/metrics and health on /healthz", host, port)

    # ------------------------------------------------------------------ state from the store

    def _history(self) -> tuple[Optional[float], Optional[float]]:
        """(newest landed occurred_at, end of the last landed batch), as Unix times."""
        newest, last = self.store.con.execute(
            "SELECT epoch((SELECT max(occurred_at) FROM events)), epoch((SELECT max(finished_at) FROM pipeline_batches))"
        ).fetchone()
        return newest, last

    def record_quality(self, counted: bool = False) -> None:
        """Reads the newest data-quality result (written by `cxj check` or `cxj run --check`)."""
        try:
            row = self.store.con.execute(
                "SELECT epoch(checked_at), failed, success FROM quality_checks ORDER BY checked_at DESC LIMIT 1").fetchone()
        except Exception:  # no quality_checks table yet: the suite never ran on this database
            return
        if row is None:
            return
        checked_at, failed, success = row
        self.quality_failed.set(failed)
        self.quality_at.set(checked_at)
        if counted:
            self.quality_runs.labels("pass" if success else "fail").inc()

    # ------------------------------------------------------------------ RunListener

    def _positions(self, positions: Positions, looked_up_at: float) -> None:
        self.board.set_landed(positions.landed)
        self.board.set_ends(positions.ends, looked_up_at)
        self.heartbeat = time.time()

    def idle(self, positions: Positions) -> None:
        self._positions(positions, getattr(positions, "looked_up_at", None) or time.time())

    def failed(self, error: BaseException) -> None:
        self.heartbeat = time.time()  # the loop is alive and retrying

    def batch_landed(self, batch: LandedBatch, positions: Positions) -> None:
        con = self.store.con
        by_event_type = con.execute(
            "SELECT event_type, count(*) FROM events WHERE batch_id = ? GROUP BY 1", [batch.batch_id]).fetchall()
        by_reason = con.execute(
            "SELECT reason, count(*) FROM dead_letters WHERE batch_id = ? GROUP BY 1", [batch.batch_id]).fetchall()
        latencies: list[Any] = con.execute(
            "SELECT epoch(landed_at) - epoch(kafka_timestamp) FROM events WHERE batch_id = ? AND kafka_timestamp IS NOT NULL",
            [batch.batch_id],
        ).fetchall()
        history = self._history()
        with self.updating:  # read first, then applied at once: no scrape sees half a batch
            self._positions(positions, getattr(positions, "looked_up_at", None) or time.time())
            self.batches.inc()
            self.consumed.inc(batch.consumed)
            self.duplicates.inc(batch.duplicates)
            self.journeys.inc(batch.journeys_written)
            self.batch_duration.observe(batch.duration_s)
            for event_type, n in by_event_type:
                self.events.labels(event_type).inc(n)
            for reason, n in by_reason:
                self.dead.labels(reason).inc(n)
            for (seconds,) in latencies:
                self.latency.observe(max(0.0, seconds))
            self._newest_event, self._last_batch = history

    # ------------------------------------------------------------------ health

    def health(self) -> tuple[int, dict[str, Any]]:
        """HTTP status and body of /healthz: 503 only when the run loop has stopped moving."""
        now = time.time()
        silent = now - self.heartbeat
        _, ends = self.board.snapshot()
        oldest = min((at for _, at in ends.values()), default=None)
        body: dict[str, Any] = {
            "status": "ok",
            "loop_heartbeat_age_s": round(silent, 3),
            "broker_up": self.board.broker_up,
            "lag_messages": self.board.lag(),
            "end_offsets_age_s": round(now - oldest, 3) if oldest is not None else None,
            "last_batch_at": datetime.fromtimestamp(self._last_batch, timezone.utc).isoformat() if self._last_batch else None,
        }
        if self.board.broker_up is False:
            body["status"] = "broker_unreachable"  # the loop retries by itself: not a reason to restart
            body["broker_error"] = self.board.broker_error
        if silent > self.stall_after_s:
            body["status"] = "stalled"
            body["reason"] = f"no batch, poll or retry for {silent:.0f}s (limit {self.stall_after_s:.0f}s)"
            return 503, body
        return 200, body

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def serve(listener: MetricsListener, host: str, port: int) -> ThreadingHTTPServer:
    """/metrics (Prometheus text format) and /healthz (JSON) on a daemon thread."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            path = self.path.split("?", 1)[0]
            if path in ("/metrics", "/"):
                with listener.updating:
                    text = generate_latest(listener.registry)
                self._send(200, CONTENT_TYPE_LATEST, text)
            elif path in ("/healthz", "/health"):
                code, body = listener.health()
                self._send(code, "application/json", (json.dumps(body) + "\n").encode())
            else:
                self._send(404, "text/plain; charset=utf-8", b"not found: try /metrics or /healthz\n")

        def _send(self, code: int, content_type: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - scrapes are not log-worthy
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="cxj-metrics-http", daemon=True).start()
    return server
