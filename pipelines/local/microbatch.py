"""The micro-batch driver: plan offsets, run the Beam stages, land atomically, repeat.

Each batch is a bounded Beam pipeline run (docs/architecture.md, D1); journeys that span batches
are recomputed from the stored events of the customers a batch touches (decision 2); the
results and the offsets land in one DuckDB transaction (decision 3).
"""
from __future__ import annotations

import logging
import shutil
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

import duckdb

from pipelines.config.run_config import RunConfig, Stopper
from pipelines.kafka.offsets import BrokerUnavailable, OffsetReader, PartitionKey
from pipelines.kafka.read import OffsetRange, RangeRead, manifest_name, read_range_chunks
from pipelines.kafka.source_log import SourceChange, offsets_to_verify, source_changes
from pipelines.local.batch_manifest import collect_assembled, collect_staged, verified_reads
from pipelines.local.batch_stages import run_assemble, run_ingest
from pipelines.local.ingest_ahead import IngestAhead, ReadAhead, split_partitions
from pipelines.local.ingest_ahead import enabled as ingest_ahead_enabled
from pipelines.local.planner import is_valid_plan, plan_ranges, start_offsets
from pipelines.ops import failures
from pipelines.storage.store import MEMORY_LIMIT_ENV, BatchFacts, BatchNotAccounted, LandedBatch, Store, StoreError, Suspect
from transforms.batch_files import DEAD_LETTER_SCHEMA, write_json, write_rows
from transforms.parse import POISON, SourceRef, dead_letter

log = logging.getLogger("cxj.run")


# Start the process that reads the next batch ahead (pipelines/local/ingest_ahead.py) only when at
# least this many records wait behind the current batch: starting it costs a few CPU seconds of
# imports, about what ingesting 20k records costs, so a short backlog is read faster without it.
# Once it runs, it reads ahead whenever anything waits.
READ_AHEAD_MIN_BACKLOG = 20_000

# Share a batch's assembly with that process (once it runs) when the history the batch
# assembles (its events and the landed events of the customers it touched) holds at least this
# many events: below it, the worker's own Beam run costs about what the share saves. `run
# --follow` also starts the process for this alone, at its first batch of this size: a
# long-lived run pays the start-up once (docs/architecture.md, "Sharing assembly while
# following").
ASSEMBLY_SHARE_MIN_EVENTS = 5_000


# Load only the part of a touched customer's history that the batch can still change
# (pipelines/storage/store.py, Store._freeze_settled_journeys). Benchmarks switch it off to
# measure what it saves; results are the same either way.
PRUNE_SETTLED_HISTORY = True


def history_horizon_s(config: RunConfig) -> float:
    """How far back in event time any journey rule looks from a new event: the repeat window
    (joining a journey), the durable-resolution window and the repeat-contact window."""
    return max(config.repeat_window_s, config.service_metrics.durable_us / 1e6, config.service_metrics.repeat_contact_window_us / 1e6)


def _is_broker_error(exc: BaseException) -> bool:
    """Kafka failures inside a Beam stage arrive wrapped by the runner: look down the chain."""
    from kafka.errors import KafkaError

    from pipelines.kafka.read import KafkaReadTimeout

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


_RETRY = object()  # an attempt failed and was recorded; plan the batch again (smaller)


class StagesBroken(RuntimeError):
    """The stages fail whatever the records: halving the batch would blame innocent records."""


ENVIRONMENT_ERRORS = ("No space left on device", "Read-only file system", "Permission denied", "Disk quota exceeded")


PROGRAMMING_ERRORS = (AttributeError, NameError, ImportError, TypeError, AssertionError)


def _is_environment_error(exc: BaseException) -> bool:
    """A full disk or a permission problem fails every batch alike: no record is to blame, so
    halving would dead-letter innocent records one by one. Such errors stop the run instead, as
    do programming errors raised in the driver itself (not inside a Beam stage, whose errors
    carry "[while running ...]")."""
    if isinstance(exc, PROGRAMMING_ERRORS) and "[while running" not in str(exc):
        return True
    return any(isinstance(seen, PermissionError) or any(text in str(seen) for text in ENVIRONMENT_ERRORS)
               for seen in failures.chain(exc))


def _out_of_memory(exc: BaseException) -> bool:
    """DuckDB could not get memory within its limit. A smaller batch may fit, so a batch of
    several records is halved as for any failure; a single record that still does not fit is
    not to blame (the store's own statements need more than the limit), so it is never
    dead-lettered for it."""
    return any(isinstance(seen, duckdb.OutOfMemoryException) or "Out of Memory Error" in str(seen)
               for seen in failures.chain(exc))


def _shrunk_ranges(suspect: Suspect, ends: dict[PartitionKey, int]) -> list[OffsetRange]:
    """The next attempt after a failure: the failed attempt's offsets not landed yet, in a
    fixed order, capped at ``suspect.cap`` offsets (half the failed attempt; the same after a
    first death, so that a second death on the same offsets can be recognised)."""
    budget = suspect.cap
    ranges = []
    for topic, partition, start, stop in suspect.remaining:
        stop = min(stop, ends.get((topic, partition), stop))
        take = min(budget, stop - start)
        if take > 0:
            ranges.append(OffsetRange(topic, partition, start, start + take))
            budget -= take
        if budget <= 0:
            break
    return ranges


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

    def staged(self, batch_id: int, staging: Path, stage: str) -> None:
        """A stage of a batch ("ingest", then "assemble") has finished writing ``staging``;
        its output is checked and read next. (Tests use this seam to take staged files away,
        as a worker with its own disk would.)"""

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
        # run --once: the broker look-up its first plan starts from (``run_once``); None otherwise
        self._first_plan_from: Optional[tuple[list[PartitionKey], dict[PartitionKey, int], dict[PartitionKey, int], set[str]]] = None
        self._goal: dict[PartitionKey, int] = {}  # where the last plan read toward (ends, or --once's targets)
        # the next batch's ingest in a second process while a backlog is read (pipelines/local/ingest_ahead.py)
        self._ahead: Optional[IngestAhead] = IngestAhead(config.batch_files_root) if ingest_ahead_enabled() else None
        self._read_ahead_taken = 0
        self._assembly_shared = 0
        self._following = False  # run by follow(): long-lived, so the worker may start for shares alone
        self.listeners: list[RunListener] = []
        # the landing leaves the worker its core while the worker reads the next batch
        store.other_process_busy = lambda: self._ahead is not None and self._ahead.busy

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
        partitions, beginnings, ends, _ = self._positions(verify=True)
        return partitions, beginnings, ends

    def _positions(self, verify: bool
                   ) -> tuple[list[PartitionKey], dict[PartitionKey, int], dict[PartitionKey, int], set[str]]:
        """broker_positions, plus the topics that do not exist; ``verify=False`` leaves the
        source-log check to the caller (plan_batch verifies after fetching the ranges' ends)."""
        reader = self._reader()
        self._looked_up_at = time.time()
        partitions, missing = reader.partitions(self.config.topics.values())
        if self.config.partitions is not None:  # --partitions: this writer's share of every topic
            partitions = [k for k in partitions if k[1] in self.config.partitions]
        for topic in missing:
            self._warn_once(f"topic {topic!r} does not exist on {self.config.settings.bootstrap_servers} (yet)")
        beginnings, ends = reader.bounds(partitions)
        self._last_ends = ends
        if verify:
            self._verify_source_logs(partitions, set(missing), beginnings, ends)
            self._seen_ends.update(ends)
        return partitions, beginnings, ends, set(missing)

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
        stored ones are verified: if the log changed at any moment before that check, the
        check fails and the batch is planned again (from the positions the change left); if it
        changes after it, the fingerprints landed belong to the old log and the next batch's
        check catches it. Each plan verifies once: the stored fingerprints are fetched after
        the ranges' last records, or on their own when there is nothing to read (a changed log
        is found and recorded while idle too). Warnings about the resume offsets wait for that
        verification, so that a change it records is not reported twice.
        """
        self.store.pending_fingerprints = {}
        for _ in range(5):
            reused, self._first_plan_from = self._first_plan_from, None
            partitions, beginnings, ends, missing = reused or self._positions(verify=False)
            starts, warnings = start_offsets(partitions, self.store.landed_offsets(), beginnings, ends)
            goal = {k: min(ends[k], targets.get(k, ends[k])) if targets else ends[k] for k in partitions}
            ranges = self._adopted_proposal(starts, goal) or plan_ranges(starts, goal, self.config.max_batch_events)
            self._goal = goal
            lasts = (self._reader().records_at({(r.topic, r.partition): r.stop - 1 for r in ranges}, ends)
                     if ranges else {})
            changes = self._verify_source_logs(partitions, missing, beginnings, ends)
            self._seen_ends.update(ends)
            if changes:
                continue  # the log changed (or had changed): plan again from the new positions
            for w in warnings:
                self._warn_once(w)
            self.store.pending_fingerprints = {
                (r.topic, r.partition, r.stop): fp for r in ranges if (fp := lasts.get((r.topic, r.partition))) is not None
            }
            return starts, ends, ranges
        raise BrokerUnavailable("the broker's logs kept changing while a batch was planned (5 attempts)")

    def _adopted_proposal(self, starts: dict[PartitionKey, int], goal: dict[PartitionKey, int]
                          ) -> Optional[list[OffsetRange]]:
        """The ranges read ahead, if they are still a valid plan: each starts where its
        partition resumes and ends within the goal. Then the batch uses what was read ahead; its
        records' fingerprints are fetched and the stored ones verified below, as for any plan."""
        proposal = self._ahead.proposal if self._ahead is not None else None
        return proposal if proposal and is_valid_plan(proposal, starts, goal) else None

    def _warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            log.warning(message)

    # ------------------------------------------------------------------ batches

    def run_batch(self, targets: Optional[dict[PartitionKey, int]] = None) -> Optional[LandedBatch]:
        """Lands one batch toward ``targets`` (default: the broker's end offsets now).

        A batch whose stages fail (not for the broker's sake) is retried at once with half the
        records, until it lands or a single record is left: that record is dead-lettered as
        ``poison``. Each halving is recorded, so a process that dies on a batch shrinks it
        across restarts too, and the pipeline never loops forever on one batch.
        """
        while True:
            outcome = self._attempt_batch(targets)
            if outcome is not _RETRY:
                return outcome  # type: ignore[return-value]

    def _attempt_batch(self, targets: Optional[dict[PartitionKey, int]]) -> "Optional[LandedBatch] | object":
        starts, ends, ranges = self.plan_batch(targets)  # resume offsets, confirmed ends, source logs verified
        for attempt_id, outcome in self.store.settle_dead_attempts():
            log.warning("attempt %d: the process died while it ran%s", attempt_id,
                        " again on the same offsets: its batch will be split" if outcome == "died_again" else "; retrying it")
        suspect = self.store.open_suspect(starts)
        if suspect is not None:
            if self._ahead is not None:
                self._ahead.discard()  # a batch is being split: it reads its own records
            ranges = _shrunk_ranges(suspect, ends)  # the fingerprints of their last records are fetched after reading
            if suspect.outcome != "died" and suspect.records == 1 and sum(r.size for r in ranges) == 1:
                return self._land_poison(suspect, ranges[0], starts, ends)
        if not ranges:
            self.store.publish_pending()  # caught up: readers see everything landed
            for listener in self.listeners:
                listener.idle(Positions(starts, ends, self._looked_up_at))
            return None
        read_ahead = self._take_read_ahead(ranges)
        plan = [{"topic": r.topic, "partition": r.partition, "from": r.start, "to": r.stop} for r in ranges]
        attempt_id = self.store.begin_attempt(plan)
        try:
            # more unread records than these ranges read: the store may defer the replica publish,
            # and the next batch's ingest may start while this one assembles and lands
            behind = Positions(starts, ends).lag - sum(r.size for r in ranges)
            read_ahead_next = self._worth_reading_ahead(behind)
            if read_ahead_next:  # (only with a second process)
                self._warm_up_ahead()  # started while this batch ingests: its assembly can be shared
            landed = self._run_and_land(ranges, attempt_id, backlog_left=behind > 0, read_ahead=read_ahead,
                                        read_next_from=starts if read_ahead_next else None)
        except (BrokerUnavailable, BatchNotAccounted, StoreError) as exc:
            self._finish_quietly(attempt_id, {BrokerUnavailable: "broker", BatchNotAccounted: "unaccounted"}.get(type(exc), "store"), exc)
            raise
        except Exception as exc:
            if _is_environment_error(exc) or failures.describe(exc, self.config.db, self.config.batch_files_root):
                self._finish_quietly(attempt_id, "error", exc)  # a full disk, a vanished directory: no record's fault
                raise
            error = failures.error_line(exc)
            size = sum(r.size for r in ranges)
            if size == 1 and _out_of_memory(exc):  # halving helped no further: the store is short of memory
                self._finish_quietly(attempt_id, "error", exc)
                raise StoreError(f"DuckDB ran out of memory even for a batch of one record (memory limit "
                                 f"{self.store.memory_limit()}; {MEMORY_LIMIT_ENV} sets another): the store needs more "
                                 f"memory, the record is not to blame; nothing of the batch was kept: {error}") from None
            # before blaming records (a first failure, or the one record about to be dead-lettered)
            if (suspect is None or size == 1) and not self._stages_work_without_records():
                self._finish_quietly(attempt_id, "error", exc)
                raise StagesBroken(f"the batch's stages fail even with no records, so no record is to blame: {error}") from None
            self.store.finish_attempt(attempt_id, "failed", error)
            log.warning("a batch of %d records failed (%s); retrying with %s to find the record that causes it",
                        size, error[:200], f"{max(1, size // 2)} records" if size > 1 else "that record dead-lettered")
            return _RETRY
        except BaseException as exc:  # KeyboardInterrupt: not the batch's fault
            self._finish_quietly(attempt_id, "interrupted", exc)
            raise
        positions = Positions(starts | {(t, p): to for t, p, to in landed.extra.pop("stops")}, *self._ends_now(list(ends), ends))
        landed.extra["lag"] = positions.lag
        self._report(landed, positions.lag)
        for listener in self.listeners:
            listener.batch_landed(landed, positions)
        return landed

    def _stages_work_without_records(self) -> bool:
        """A control run of both stages over no records: if it fails too, the failure lies in
        the environment (threads, memory, disk, runner), not in the batch's records."""
        probe = self.config.batch_files_root / "probe"
        shutil.rmtree(probe, ignore_errors=True)
        try:
            probe.mkdir(parents=True)
            run_ingest([], self.config.settings, self.config.stream_of_topic, 0, probe, self.config.beam_args,
                       self.config.limits, self.config.read_timeout_s)
            run_assemble([], probe, self.config.repeat_window_s, self.config.beam_args)
            return True
        except Exception:
            log.debug("the control run without records failed", exc_info=True)
            return False
        finally:
            shutil.rmtree(probe, ignore_errors=True)

    def _fingerprint_real_stops(self, reads: list[dict]) -> None:
        """The source-log fingerprint of each range's last record read, where the reader stopped
        before the planned stop (the byte budget) or the ranges were shrunk after a failure."""
        wanted = {(r["topic"], r["partition"]): r["stop"] - 1 for r in reads
                  if r["stop"] > r["start"] and (r["topic"], r["partition"], r["stop"]) not in self.store.pending_fingerprints}
        if wanted:
            try:
                found = self._reader().records_at(wanted, self._last_ends)
            except Exception as exc:  # a broker failure here is like one while reading
                raise BrokerUnavailable(f"reading from Kafka failed: {failures.error_line(exc)}") from None
            for (topic, partition), fp in found.items():
                if fp is not None:
                    self.store.pending_fingerprints[(topic, partition, wanted[(topic, partition)] + 1)] = fp

    def _tell_staged(self, batch_id: int, staging: Path, stage: str) -> None:
        for listener in self.listeners:
            staged = getattr(listener, "staged", None)  # listeners need not subclass RunListener
            if staged is not None:
                staged(batch_id, staging, stage)

    def _finish_quietly(self, attempt_id: int, outcome: str, exc: BaseException) -> None:
        try:
            self.store.finish_attempt(attempt_id, outcome, failures.error_line(exc))
        except Exception:  # the store itself may be what failed; the attempt then stays open
            log.debug("could not record the attempt's outcome", exc_info=True)

    def _ingest_arguments(self, now_us: int) -> dict:
        """run_ingest's arguments besides the ranges and the staging dir (the same whether the
        stage runs here or is read ahead)."""
        return {"settings": self.config.settings, "stream_of_topic": self.config.stream_of_topic,
                "now_us": now_us, "beam_args": list(self.config.beam_args),
                "limits": self.config.limits, "read_timeout_s": self.config.read_timeout_s,
                "budget_bytes": self.config.max_batch_bytes}

    def _worth_reading_ahead(self, behind: int) -> bool:
        """Records wait behind this batch, and enough of them to pay for starting the worker
        (once it runs, any backlog is worth it)."""
        if self._ahead is None or behind <= 0:
            return False
        return self._ahead.warm or behind >= READ_AHEAD_MIN_BACKLOG

    def _worth_starting_for_shares(self, history_events: int) -> bool:
        """A following run assembles a history large enough to share, with no worker yet:
        histories like it will come again, and the start-up (1-2 CPU s) is paid once. A `run
        --once` without a backlog behind its batch would pay it for one batch or none."""
        return (self._following and self._ahead is not None and not self._ahead.warm
                and history_events >= ASSEMBLY_SHARE_MIN_EVENTS)

    def _read_next_ahead(self, starts: dict[PartitionKey, int], reads: list[dict]) -> None:
        """Starts the next batch's ingest in the second process: from where these reads stopped
        toward the same goal. The next plan adopts it only if it is still valid then."""
        assert self._ahead is not None
        following = dict(starts) | {(r["topic"], r["partition"]): r["stop"] for r in reads}
        ranges = plan_ranges(following, self._goal, self.config.max_batch_events)
        if ranges:
            try:
                self._ahead.start(ranges, **self._ingest_arguments(int(time.time() * 1_000_000)))
            except Exception as exc:  # never the batch's fault: its records must not be blamed
                self._turn_ahead_off(exc)

    def _warm_up_ahead(self) -> None:
        assert self._ahead is not None
        try:
            self._ahead.warm_up()
        except Exception as exc:  # never the batch's fault
            self._turn_ahead_off(exc)

    def _take_read_ahead(self, ranges: list[OffsetRange]) -> Optional[ReadAhead]:
        if self._ahead is None:
            return None
        try:
            taken = self._ahead.take(ranges)
        except Exception as exc:
            self._turn_ahead_off(exc)
            return None
        self._read_ahead_taken += taken is not None
        return taken

    @staticmethod
    def _adopt(read_ahead: ReadAhead, staging: Path) -> bool:
        """Moves what was read ahead to the batch's staging dir: the same files the stage would
        have written there. If that fails, the batch ingests itself (never the records' fault)."""
        try:
            read_ahead.staging.rename(staging)
            return True
        except OSError as exc:
            log.debug("could not use what was read ahead (%s); the batch ingests itself", exc)
            shutil.rmtree(read_ahead.staging, ignore_errors=True)
            shutil.rmtree(staging, ignore_errors=True)
            return False

    def _turn_ahead_off(self, exc: BaseException) -> None:
        """The second process could not be used: this run ingests every batch itself."""
        log.warning("reading the next batch ahead is off for this run (%s); batches ingest one after another",
                    failures.error_line(exc))
        ahead, self._ahead = self._ahead, None
        try:
            if ahead is not None:
                ahead.close()
        except Exception:
            log.debug("closing the read-ahead worker failed", exc_info=True)

    def _run_and_land(self, ranges: list[OffsetRange], attempt_id: int, backlog_left: bool = False,
                      read_ahead: Optional[ReadAhead] = None,
                      read_next_from: Optional[dict[PartitionKey, int]] = None) -> LandedBatch:
        """Runs the two stages, checks their output and lands it; the staging dir is removed after.
        ``backlog_left``: records wait behind these ranges (the store may defer the replica publish).
        ``read_next_from``: where these ranges started, given when the next batch is to be read ahead.
        ``read_ahead``: these ranges' ingest output, staged by the second process."""
        started_at = datetime.now(timezone.utc)
        batch_id = self.store.next_batch_id()
        staging = self.config.batch_files_root / f"batch-{batch_id}"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            if read_ahead is not None and self._adopt(read_ahead, staging):
                ingest_s = read_ahead.seconds
            else:
                staging.mkdir(parents=True)
                ingest_s = _broker_errors_named(run_ingest)(
                    ranges=ranges, staging=staging, **self._ingest_arguments(int(started_at.timestamp() * 1_000_000))).seconds
            self._tell_staged(batch_id, staging, "ingest")
            reads = verified_reads(staging, ranges, batch_id)
            self._fingerprint_real_stops(reads)
            read_next = _once(lambda: self._read_next_ahead(read_next_from, reads)
                              if read_next_from is not None and self._ahead is not None else None)
            # a worker already running may take a share; one started below (for the batches to
            # come) would still be importing when this batch assembles
            may_share = self._ahead is not None and self._ahead.warm
            if not may_share:
                read_next()  # at once: the worker has nothing else to do
            staged = collect_staged(staging)
            resolution = self.store.resolve_copies(staged, batch_id)
            assemble_s = 0.0
            history = staging / "history"
            history_events = self.store.export_history(
                history, horizon_s=history_horizon_s(self.config) if PRUNE_SETTLED_HISTORY else None)
            if self._worth_starting_for_shares(history_events):
                self._warm_up_ahead()
            # the landing's first reads, on the core the assembly leaves free: not where a worker
            # may take a share of the assembly or works on the next batch (it needs that core)
            reads_done = (_on_a_thread(self.store.read_before_landing, "cxj-read-before-landing")
                          if history_events and not may_share and not self.store.other_process_busy() else _nothing)
            try:
                if history_events:
                    files = sorted(str(f) for f in history.rglob("*.parquet"))
                    share = may_share and history_events >= ASSEMBLY_SHARE_MIN_EVENTS
                    assemble_s = self._assemble(files, staging, share, read_next)
            finally:
                reads_done()  # before anything else uses the store's connection
            read_next()
            self._tell_staged(batch_id, staging, "assemble")
            collect_assembled(staging, history, staged, batch_id)
            facts = BatchFacts(
                batch_id=batch_id,
                started_at=started_at,
                ranges=[{"topic": r["topic"], "partition": r["partition"], "from": r["start"], "to": r["stop"]}
                        for r in reads if r["stop"] > r["start"]],
                reads=reads,
                ingest_s=ingest_s,
                assemble_s=assemble_s,
                attempt_id=attempt_id,
            )
            log.debug("batch %d: landing %d new events (%d replacing landed copies) and offsets in one transaction",
                      batch_id, resolution.new, resolution.replacing)
            landed = self.store.land(facts, staged, backlog_left=backlog_left)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        landed.extra["stops"] = [(r["topic"], r["partition"], r["to"]) for r in facts.ranges]
        landed.extra["settled_journeys"] = dict(self.store.settled_journeys)
        return landed

    def _assemble(self, files: list[str], staging: Path, share: bool, read_next: Callable[[], None]) -> float:
        """Runs the assemble stage over ``files``; with ``share``, the second process assembles
        part of them at the same time (docs/performance.md, "Assembling on both cores").
        ``read_next`` starts reading the next batch ahead: after the share is sent, so the
        worker finishes the share first. Returns the stage's seconds."""
        started = time.perf_counter()
        arguments = {"repeat_window_s": self.config.repeat_window_s, "beam_args": list(self.config.beam_args),
                     "metrics": self.config.service_metrics}
        mine, theirs = files, []
        if share and self._ahead is not None:
            mine, theirs = split_partitions(files, {f: Path(f).stat().st_size for f in files})
            if not theirs or not self._ahead.assemble_share(theirs, staging=staging, **arguments):
                mine, theirs = files, []
        read_next()
        worker_done = False
        try:
            if mine:
                run_assemble(mine, staging, **arguments)
        finally:
            if theirs and self._ahead is not None:  # always waited for: the worker must not write here later
                waited = time.perf_counter()
                worker_done = self._ahead.assembled()
                log.debug("assembly: the worker's share of %d of %d files %s; waited %.2fs for it after %.2fs here",
                          len(theirs), len(files), "done" if worker_done else "not done", time.perf_counter() - waited,
                          waited - started)
        if theirs and not worker_done:
            run_assemble(theirs, staging, **arguments)  # the worker failed or died: its files are rewritten here
        self._assembly_shared += bool(theirs) and worker_done
        return time.perf_counter() - started

    def _land_poison(self, suspect: Suspect, offset_range: OffsetRange,
                     starts: dict[PartitionKey, int], ends: dict[PartitionKey, int]) -> LandedBatch:
        """Dead-letters the single record that failed its batch, so the pipeline moves on.

        The record is read directly (not through the stage that failed on it); the dead letter
        keeps its raw bytes and the failure, and goes through the same checked landing."""
        started_at = datetime.now(timezone.utc)
        batch_id = self.store.next_batch_id()
        staging = self.config.batch_files_root / f"batch-{batch_id}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        plan = [{"topic": offset_range.topic, "partition": offset_range.partition,
                 "from": offset_range.start, "to": offset_range.stop}]
        attempt_id = self.store.begin_attempt(plan)
        try:
            report: dict[PartitionKey, RangeRead] = {}
            records = [rec for chunk in read_range_chunks(self.config.settings, [offset_range], self.config.read_timeout_s,
                                                          report=report) for rec in chunk]
            why = ("the process died twice in a row while its batch ran" if suspect.outcome == "died_again"
                   else f"a stage failed on it: {suspect.error}")
            # the record's own metadata is not trusted either: its Kafka timestamp goes in the detail
            dead = [dead_letter(SourceRef(t, p, o, None), value, POISON,
                                f"{why} (isolated by halving the batch; Kafka timestamp {ts} ms)")
                    for t, p, o, ts, value in records]
            if dead:
                write_rows(str(staging / f"dead-{offset_range.topic}-{offset_range.partition}-{offset_range.start}.parquet"),
                           dead, DEAD_LETTER_SCHEMA)
            write_json(str(staging / manifest_name([offset_range])), [e.to_json() for e in report.values()])
            self._tell_staged(batch_id, staging, "ingest")
            reads = verified_reads(staging, [offset_range], batch_id)
            self._fingerprint_real_stops(reads)
            staged = collect_staged(staging)
            self.store.resolve_copies(staged, batch_id)
            facts = BatchFacts(
                batch_id=batch_id, started_at=started_at,
                ranges=[{"topic": r["topic"], "partition": r["partition"], "from": r["start"], "to": r["stop"]}
                        for r in reads if r["stop"] > r["start"]],
                reads=reads, ingest_s=0.0, attempt_id=attempt_id,
            )
            landed = self.store.land(facts, staged)
        except (BrokerUnavailable, BatchNotAccounted, StoreError) as exc:
            self._finish_quietly(attempt_id, "unaccounted" if isinstance(exc, BatchNotAccounted) else "error", exc)
            raise
        except Exception as exc:
            if _is_broker_error(exc):
                self._finish_quietly(attempt_id, "broker", exc)
                raise BrokerUnavailable(f"reading from Kafka failed: {failures.error_line(exc)}") from None
            self._finish_quietly(attempt_id, "error", exc)
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        log.error("batch %d: dead-lettered %s[%d] offset %d as %s: %s", batch_id, offset_range.topic,
                  offset_range.partition, offset_range.start, POISON, suspect.error or suspect.outcome)
        positions = Positions(starts | {(r["topic"], r["partition"]): r["to"] for r in facts.ranges}, ends)
        landed.extra["lag"] = positions.lag
        self._report(landed, positions.lag)
        for listener in self.listeners:
            listener.batch_landed(landed, positions)
        return landed

    def _ends_now(self, partitions: list[PartitionKey],
                  planned: dict[PartitionKey, int]) -> tuple[dict[PartitionKey, int], Optional[float]]:
        """End offsets looked up again after landing: the ones the batch was planned with are stale
        by now (producers kept sending), and the lag a batch reports must be today's, not the plan's.
        One round suffices (it only reports; the next plan confirms ends with this answer as its
        first round, pipelines/kafka/offsets.py)."""
        looked_up_at = time.time()
        try:
            ends = self._reader().latest_ends(partitions)
        except BrokerUnavailable:
            ends = None
        if ends is None:
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
                at_start = self._positions(verify=True)  # as broker_positions
                break
            except BrokerUnavailable as exc:
                self._reset_reader()
                if time.monotonic() > deadline:
                    raise BrokerUnavailable(f"{exc} (gave up after {self.config.broker_timeout_s:.0f}s)") from None
                log.warning("%s; retrying", exc)
                time.sleep(1.0)
        targets = dict(at_start[2])
        # the first plan starts from this look-up, made a moment ago, instead of making another
        # (a metadata request and the end offsets' confirmation: 0.04-0.07 s here)
        self._first_plan_from = at_start
        self.changed_partitions.clear()
        batches: list[LandedBatch] = []
        started = time.monotonic()
        rechecks = 0
        while True:
            try:
                batch = self.run_batch(targets)
            finally:
                self._first_plan_from = None  # only a look-up made a moment ago is planned from
            self._retarget_changed(targets)
            if batch is not None:
                batches.append(batch)
                done = sum(b.consumed for b in batches)
                remaining = batch.extra.get("lag", 0)
                log.info("progress: %d records done (%.0f records/s), about %d to go until the end offsets seen at start",
                         done, done / max(time.monotonic() - started, 1e-9), max(0, remaining - self._arrived_since(targets)))
                continue
            if self._idle_plan_reached(targets):
                return batches
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

    def _idle_plan_reached(self, targets: dict[PartitionKey, int]) -> bool:
        """The plan that just found nothing to read confirmed ends at or past every target, and
        every target is landed: then no record below the targets can be unread, and the look-up
        of ``_unread_below`` (up to five broker round trips) would find the same. It is needed only
        where that plan's ends fell short of a target (an end under-reported during the run) or
        a partition resumes from its log's start rather than a landed offset."""
        landed = self.store.landed_offsets()
        return all(self._last_ends.get(k, -1) >= target and landed.get(k, 0) >= target for k, target in targets.items())

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
        self._following = True
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
                self._wait_for_records(stopper)
            else:
                landed += batch.landed
        return landed

    def _wait_for_records(self, stopper: Stopper) -> None:
        """Caught up: waits up to the poll interval, but plans the next batch as soon as a record
        arrives past the ends just confirmed (one long-polling fetch; pipelines/kafka/offsets.py
        ``wait_for_records``) rather than sleeping the interval out."""
        deadline = time.monotonic() + self.config.poll_interval_s
        if self.offsets is not None and self._last_ends and self.offsets.wait_for_records(
                self._last_ends, self.config.poll_interval_s, lambda: stopper.stopping):
            return
        stopper.sleep(max(0.0, deadline - time.monotonic()))  # the rest of the interval, if the wait could not run

    @property
    def batches_read_ahead(self) -> int:
        """Batches of this run whose ingest the second process had done."""
        return self._read_ahead_taken

    @property
    def batches_assembled_on_both_cores(self) -> int:
        """Batches of this run part of whose assembly the second process did."""
        return self._assembly_shared

    def close(self) -> None:
        if self._ahead is not None:
            self._ahead.close()
        self._reset_reader()


def _nothing() -> None:
    pass


def _on_a_thread(action: Callable[[], None], name: str) -> Callable[[], None]:
    """Starts ``action`` on a thread of its own and returns the call that waits for it. Its
    errors are logged, not raised: it only reads ahead what a later step reads itself when
    it was not read (Store.read_before_landing), and that step reports a lasting failure."""
    def run() -> None:
        try:
            action()
        except Exception:  # the later step reads it again and reports its own error
            log.debug("%s failed; the landing reads it itself", name, exc_info=True)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread.join


def _once(action: Callable[[], None]) -> Callable[[], None]:
    """``action`` run at the first call only; later calls do nothing."""
    done = False

    def run() -> None:
        nonlocal done
        if not done:
            done = True
            action()
    return run
