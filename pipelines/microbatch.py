"""The micro-batch driver: plan offsets, run the Beam stages, land atomically, repeat.

Each batch is a bounded Beam pipeline run (DESIGN decision 1); journeys that span batches
are recomputed from the stored events of the customers a batch touches (decision 2); the
results and the offsets land in one DuckDB transaction (decision 3).
"""
from __future__ import annotations

import logging
import shutil
import signal
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.batch_stages import run_assemble, run_ingest
from pipelines.kafka_config import DEFAULT_TOPICS, KafkaSettings
from pipelines.kafka_offsets import BrokerUnavailable, OffsetReader, PartitionKey
from pipelines.planner import plan_ranges, start_offsets
from pipelines.run_config import RunConfig, Stopper
from pipelines.source_log import SourceChange, offsets_to_verify, source_changes
from pipelines.store import BatchFacts, LandedBatch, Store
from transforms.journeys import DEFAULT_REPEAT_WINDOW_S
from transforms.kafka_source import OffsetRange
from transforms.parse import ParseLimits
from transforms.staging import (
    DEAD_LETTER_SCHEMA,
    EVENT_SCHEMA,
    HANDOFF_SCHEMA,
    JOURNEY_METRICS_SCHEMA,
    JOURNEY_SCHEMA,
    LINK_SCHEMA,
)

log = logging.getLogger("cxj.run")

STAGED_KINDS = {"events": EVENT_SCHEMA, "dead": DEAD_LETTER_SCHEMA, "journeys": JOURNEY_SCHEMA, "links": LINK_SCHEMA,
                "jmetrics": JOURNEY_METRICS_SCHEMA, "handoffs": HANDOFF_SCHEMA}


def _is_broker_error(exc: BaseException) -> bool:
    """Kafka failures inside a Beam stage arrive wrapped by the runner: look down the chain."""
    from kafka.errors import KafkaError

    from transforms.kafka_source import KafkaReadTimeout

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (KafkaReadTimeout, KafkaError, ConnectionError)):
            return True
        text = str(seen)
        if any(name in text for name in ("KafkaReadTimeout", "KafkaConnectionError", "KafkaTimeoutError", "NoBrokersAvailable")):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _broker_errors_named(stage):  # type: ignore[no-untyped-def]
    """Runs a stage; a broker failure inside it becomes BrokerUnavailable (retried by --follow)."""

    def run(*args, **kwargs):  # type: ignore[no-untyped-def]
        try:
            return stage(*args, **kwargs)
        except Exception as exc:
            if _is_broker_error(exc):
                first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
                raise BrokerUnavailable(f"reading from Kafka failed: {first[:300]}") from None
            raise

    return run


def _ensure_staged_files(staging: Path, kinds: Sequence[str]) -> None:
    """Writes an empty file for a kind no worker produced, so landing reads uniformly."""
    for kind in kinds:
        if not any(staging.glob(f"{kind}*.parquet")):
            pq.write_table(pa.Table.from_pylist([], schema=STAGED_KINDS[kind]), staging / f"{kind}-empty.parquet")


@dataclass
class Positions:
    """Per partition: the next offset to land and the broker's end offset, when last seen."""

    landed: dict[PartitionKey, int]
    ends: dict[PartitionKey, int]
    looked_up_at: Optional[float] = None  # Unix time the end-offset look-up started (ends are at least this fresh)

    @property
    def lag(self) -> int:
        return sum(max(0, end - self.landed.get(k, 0)) for k, end in self.ends.items())


class RunListener:
    """Observer of a run (metrics exporters, quality gates, progress). Override what you need."""

    def batch_landed(self, batch: LandedBatch, positions: Positions) -> None: ...

    def idle(self, positions: Positions) -> None: ...

    def failed(self, error: BaseException) -> None: ...


class MicroBatchRunner:
    """Owns the store and the broker metadata connection for the life of a run."""

    def __init__(self, config: RunConfig, store: Store) -> None:
        self.config = config
        self.store = store
        self.offsets: Optional[OffsetReader] = None
        self._warned: set[str] = set()
        self._last_ends: dict[PartitionKey, int] = {}  # confirmed ends at the last look
        self._seen_ends: dict[PartitionKey, int] = {}  # newest end seen of every partition ever seen in this run
        self.changed_partitions: set[PartitionKey] = set()  # partitions whose log changed during this run
        self._looked_up_at: Optional[float] = None
        self.listeners: list[RunListener] = []

    # ------------------------------------------------------------------ broker

    def _reader(self) -> OffsetReader:
        if self.offsets is None:
            self.offsets = OffsetReader(self.config.settings, connect_timeout_s=min(5.0, self.config.broker_timeout_s))
        return self.offsets

    def _reset_reader(self) -> None:
        if self.offsets is not None:
            self.offsets.close()
        self.offsets = None

    def broker_positions(self) -> tuple[list[PartitionKey], dict[PartitionKey, int], dict[PartitionKey, int]]:
        """Partitions, earliest and confirmed end offsets, after checking that every partition's
        log is still the one we landed from (and recording what changed if not)."""
        reader = self._reader()
        self._looked_up_at = time.time()
        partitions, missing = reader.partitions(self.config.topics.values())
        for topic in missing:
            self._warn_once(f"topic {topic!r} does not exist on {self.config.settings.bootstrap_servers} (yet)")
        beginnings, ends = reader.bounds(partitions)
        self._last_ends = ends
        self._verify_source_logs(partitions, set(missing), beginnings, ends)
        self._seen_ends.update(ends)
        return partitions, beginnings, ends

    def _verify_source_logs(self, partitions: list[PartitionKey], missing: set[str],
                            beginnings: dict[PartitionKey, int], ends: dict[PartitionKey, int],
                            only: Optional[set[PartitionKey]] = None) -> list[SourceChange]:
        """Fetches the last landed record of every partition again and compares its fingerprint.

        A different record or none at all means the broker's log is not the one we landed from
        (a recreated topic: the local broker keeps data in memory only), whether that happened
        while we ran or while we were stopped. Such a partition is re-read from its earliest
        offset: safe, because events are de-duplicated by event_id. Records deleted unread
        (retention) and removed partitions are counted. Every change is logged and stored in
        source_resets, with the new resume offset, in one transaction.
        """
        stored = self.store.landed_offsets()
        fingerprints = self.store.source_fingerprints()
        if only is not None:
            stored = {k: o for k, o in stored.items() if k in only}
        wanted = offsets_to_verify(stored, fingerprints, partitions, beginnings, ends)
        observed = self._reader().records_at(wanted, ends) if wanted else {}
        changes = source_changes(stored, fingerprints, partitions, missing, beginnings, ends, observed, self._seen_ends)
        if changes:
            for change in changes:
                log.warning("%s", change.message())
            self.store.record_source_changes(changes, self.store.next_batch_id())
            self.changed_partitions.update(c.key for c in changes)
        return changes

    def plan_batch(self, targets: Optional[dict[PartitionKey, int]] = None
                   ) -> tuple[dict[PartitionKey, int], dict[PartitionKey, int], list[OffsetRange]]:
        """(resume offsets, confirmed ends, ranges to read) for the next batch.

        The fingerprints of the records at the ends of the ranges are fetched before the
        stored ones are verified once more: if the log changed at any moment before that
        last check, the check fails and the batch is planned again; if it changes after it,
        the fingerprints landed belong to the old log and the next batch's check catches it.
        """
        self.store.pending_fingerprints = {}
        for _ in range(5):
            partitions, beginnings, ends = self.broker_positions()
            starts, warnings = start_offsets(partitions, self.store.landed_offsets(), beginnings, ends)
            for w in warnings:
                self._warn_once(w)
            goal = {k: min(ends[k], targets.get(k, ends[k])) if targets else ends[k] for k in partitions}
            ranges = plan_ranges(starts, goal, self.config.max_batch_events)
            if not ranges:
                return starts, ends, ranges
            reader = self._reader()
            lasts = reader.records_at({(r.topic, r.partition): r.stop - 1 for r in ranges}, ends)
            if self._verify_source_logs(partitions, set(), beginnings, ends, only={(r.topic, r.partition) for r in ranges}):
                continue  # the log changed while planning: plan again from the new positions
            self.store.pending_fingerprints = {
                (r.topic, r.partition, r.stop): fp for r in ranges if (fp := lasts.get((r.topic, r.partition))) is not None
            }
            return starts, ends, ranges
        raise BrokerUnavailable("the broker's logs kept changing while a batch was planned (5 attempts)")

    def _warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            log.warning(message)

    # ------------------------------------------------------------------ batches

    def run_batch(self, targets: Optional[dict[PartitionKey, int]] = None) -> Optional[LandedBatch]:
        """Lands one batch toward ``targets`` (default: the broker's end offsets now)."""
        starts, ends, ranges = self.plan_batch(targets)
        if not ranges:
            for listener in self.listeners:
                listener.idle(Positions(starts, ends, self._looked_up_at))
            return None
        started_at = datetime.now(timezone.utc)
        batch_id = self.store.next_batch_id()
        staging = self.config.staging_root / f"batch-{batch_id}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            ingest = _broker_errors_named(run_ingest)(
                ranges,
                self.config.settings,
                self.config.stream_of_topic,
                int(started_at.timestamp() * 1_000_000),
                staging,
                self.config.beam_args,
                self.config.limits,
                self.config.read_timeout_s,
            )
            _ensure_staged_files(staging, ["events", "dead"])
            staged, new = self.store.select_new_events(staging)
            assemble_s = 0.0
            history = staging / "history"
            if self.store.export_history(history):
                files = sorted(str(f) for f in history.rglob("*.parquet"))
                assemble_s = run_assemble(files, staging, self.config.repeat_window_s, self.config.beam_args,
                                          self.config.metrics).seconds
            _ensure_staged_files(staging, ["journeys", "links", "jmetrics", "handoffs"])
            planned = sum(r.size for r in ranges)
            facts = BatchFacts(
                batch_id=batch_id,
                started_at=started_at,
                ranges=[{"topic": r.topic, "partition": r.partition, "from": r.start, "to": r.stop} for r in ranges],
                consumed=ingest.counters.get("cxj:records_read", planned),
                duplicates_in_batch=ingest.counters.get("cxj:duplicates_in_batch", 0),
                ingest_s=ingest.seconds,
                assemble_s=assemble_s,
            )
            log.debug("batch %d: landing %d new events and offsets in one transaction", batch_id, new)
            landed = self.store.land(facts, staging, duplicates_landed_before=staged - new)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        accounted = landed.landed + landed.duplicates + landed.dead_letters
        if accounted != landed.consumed:
            log.error("batch %d: consumed %d but accounted for %d", batch_id, landed.consumed, accounted)
        positions = Positions(starts | {(r.topic, r.partition): r.stop for r in ranges}, *self._ends_now(list(ends), ends))
        landed.extra["lag"] = positions.lag
        self._report(landed, positions.lag)
        for listener in self.listeners:
            listener.batch_landed(landed, positions)
        return landed

    def _ends_now(self, partitions: list[PartitionKey], planned: dict[PartitionKey, int]) -> tuple[dict[PartitionKey, int], Optional[float]]:
        """End offsets looked up again after landing: the ones the batch was planned with are stale
        by now (producers kept sending), and the lag a batch reports must be today's, not the plan's."""
        looked_up_at = time.time()
        try:
            _, ends = self._reader().bounds(partitions)
        except BrokerUnavailable:
            return planned, self._looked_up_at  # the next look-up will retry; report what is known
        return {**planned, **ends}, looked_up_at  # _last_ends stays the plan's: --once targets rely on it

    def _report(self, batch: LandedBatch, remaining: int) -> None:
        rate = batch.consumed / batch.duration_s if batch.duration_s > 0 else 0.0
        fields = {
            "batch_id": batch.batch_id, "records": batch.consumed, "landed": batch.landed,
            "duplicates": batch.duplicates, "dead_letters": batch.dead_letters,
            "customers": batch.customers_touched, "journeys": batch.journeys_written,
            "duration_s": round(batch.duration_s, 3), "records_per_s": round(rate, 1), "lag": remaining,
        }
        log.info(
            "batch %d: %d records (%d landed, %d duplicates, %d dead letters), %d customers, "
            "%d journeys in %.2fs (%.0f records/s); lag %d",
            batch.batch_id, batch.consumed, batch.landed, batch.duplicates, batch.dead_letters,
            batch.customers_touched, batch.journeys_written, batch.duration_s, rate, remaining,
            extra={"fields": fields},
        )

    # ------------------------------------------------------------------ loops

    def run_once(self) -> list[LandedBatch]:
        """Lands everything up to the confirmed end offsets seen at start, then returns.

        After the last batch the end offsets are confirmed once more and compared with what
        landed: records below the start's end offsets that are still unread (an end offset
        under-reported during the run) are landed before returning, so "caught up" is true.
        """
        deadline = time.monotonic() + self.config.broker_timeout_s
        while True:
            try:
                _, _, targets = self.broker_positions()
                break
            except BrokerUnavailable as exc:
                self._reset_reader()
                if time.monotonic() > deadline:
                    raise BrokerUnavailable(f"{exc} (gave up after {self.config.broker_timeout_s:.0f}s)") from None
                log.warning("%s; retrying", exc)
                time.sleep(1.0)
        targets = dict(targets)
        self.changed_partitions.clear()
        batches: list[LandedBatch] = []
        started = time.monotonic()
        rechecks = 0
        while True:
            batch = self.run_batch(targets)
            self._retarget_changed(targets)
            if batch is not None:
                batches.append(batch)
                done = sum(b.consumed for b in batches)
                remaining = batch.extra.get("lag", 0)
                log.info("progress: %d records done (%.0f records/s), about %d to go until the end offsets seen at start",
                         done, done / max(time.monotonic() - started, 1e-9), max(0, remaining - self._arrived_since(targets)))
                continue
            short = self._unread_below(targets)
            self._retarget_changed(targets)
            if not short:
                return batches
            rechecks += 1
            if rechecks > 5:
                where = ", ".join(f"{t}[{p}] {n}" for (t, p), n in sorted(short.items()))
                raise BrokerUnavailable(f"could not read up to the end offsets seen at start: still unread {where}")
            log.warning("%d records below the end offsets seen at start are still unread (%s): reading on",
                        sum(short.values()), ", ".join(f"{t}[{p}]" for t, p in sorted(short)))

    def _retarget_changed(self, targets: dict[PartitionKey, int]) -> None:
        """A partition whose log changed during --once is read to its new log's end."""
        for key in self.changed_partitions:
            if key in self._last_ends:
                targets[key] = self._last_ends[key]
            else:
                targets.pop(key, None)
        self.changed_partitions.clear()

    def _unread_below(self, targets: dict[PartitionKey, int]) -> dict[PartitionKey, int]:
        """Per partition, records below min(target, confirmed end now) not landed yet."""
        partitions, beginnings, ends = self.broker_positions()
        landed = self.store.landed_offsets()
        short = {k: min(targets[k], ends[k]) - landed.get(k, beginnings.get(k, 0)) for k in partitions if k in targets}
        return {k: n for k, n in short.items() if n > 0}

    def _arrived_since(self, targets: dict[PartitionKey, int]) -> int:
        """Messages that arrived after the run started (not part of --once's work)."""
        if self.offsets is None or not self._last_ends:
            return 0
        return sum(max(0, end - targets.get(k, end)) for k, end in self._last_ends.items())

    def follow(self, stopper: Stopper) -> int:
        """Keeps landing until stopped; broker outages are retried with backoff."""
        landed = 0
        backoff = 1.0
        while not stopper.stopping:
            try:
                batch = self.run_batch()
                backoff = 1.0
            except BrokerUnavailable as exc:
                self._reset_reader()
                for listener in self.listeners:
                    listener.failed(exc)
                log.warning("broker unavailable: %s; retrying in %.0fs", exc, backoff)
                stopper.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            if batch is None:
                stopper.sleep(self.config.poll_interval_s)
            else:
                landed += batch.landed
        return landed

    def close(self) -> None:
        self._reset_reader()
