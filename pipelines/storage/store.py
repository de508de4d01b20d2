"""The DuckDB store: the only module that writes the journey tables.

Everything a batch produces lands in one transaction together with the Kafka offsets it
read, so a crash at any point followed by a restart gives exactly the tables of an
uninterrupted run (docs/architecture.md, D3). Keeping all writes here means the storage choice
can change without touching the pipeline.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Optional

import duckdb

from pipelines.kafka.source_log import PARTITION_REMOVED, Fingerprint, SourceChange
from pipelines.storage.models import SCHEMA_SQL
from pipelines.storage.quoting import sql_literal
from pipelines.storage.replica import ReplicaError, open_writer_replica

if TYPE_CHECKING:
    import pyarrow as pa  # imported where used: the store's readers never load Arrow

    from pipelines.storage.revision_sql import ValueColumn

log = logging.getLogger("cxj.store")


class StoreError(RuntimeError):
    """A one-line, user-facing problem with the database file."""


# Failures of the database itself (a full disk, an I/O error, a constraint the data breaks, a
# database invalidated by an earlier failed write): a database problem, exit 2. Other DuckDB errors
# (e.g. a binder error) are pipeline bugs and keep their own type (exit 4).
STORAGE_FAILURES = (duckdb.IOException, duckdb.ConstraintException, duckdb.TransactionException,
                    duckdb.FatalException, duckdb.PermissionException)


def _file_identity(path: Path) -> Optional[tuple[int, int]]:
    """(device, inode) of the file at ``path`` now; None when nothing is there."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return info.st_dev, info.st_ino


def _close_quietly(con: duckdb.DuckDBPyConnection) -> None:
    try:
        con.close()
    except duckdb.Error:
        pass


def _in_one_transaction(con: duckdb.DuckDBPyConnection, statements: list[str]) -> None:
    """All of ``statements`` or, on any failure, none of them; the failure's own cause is raised."""
    con.execute("BEGIN TRANSACTION")
    try:
        for statement in statements:
            con.execute(statement)
        con.execute("COMMIT")
    except BaseException:
        _rollback_quietly(con)
        raise


def _rollback_quietly(con: duckdb.DuckDBPyConnection) -> None:
    """Rolls back if a transaction is still open. A failed write can end the transaction itself
    (or invalidate the database); the ROLLBACK's own "no transaction is active" error would then
    replace the real cause in the user's one line, so it is swallowed here."""
    try:
        con.execute("ROLLBACK")
    except duckdb.Error:
        pass


# How long a writer waits for another process's lock on the database file to go away (a
# one-shot reader of a database without a replica, `cxj check` storing its result, a
# notebook): brief holders are waited out instead of failing the start (`cxj run --lock-timeout`).
DEFAULT_LOCK_TIMEOUT_S = 10.0

# DuckDB's memory limit for the store's database: its buffer pool of cached blocks and what its
# statements may hold before they spill to disk (next to the database file). DuckDB's own
# default is 80% of the machine's memory, and a writer caches ever more of a growing store: over
# a 1M-event backlog it grew from 0.6 to 1.5 GB, at 512 MB it stayed near 0.9 GB and ran as fast
# (docs/performance.md, "Memory over a 1M-event backlog"). Another size in DuckDB's notation
# (2GB, 800MB) through this environment variable.
MEMORY_LIMIT_ENV = "CXJ_DUCKDB_MEMORY_LIMIT"
DEFAULT_MEMORY_LIMIT = "512MB"
# While a backlog is read, the replica is published at most this often (and always once the
# backlog is read): one publish covers all batches landed since the last, and a publish is the
# largest fixed cost of a batch (docs/performance.md, "Replica publish while catching up").
REPLICA_DEFER_MAX_S = 30.0
# The writer checkpoints itself once the write-ahead log reaches this size (DuckDB's own default
# threshold), after a batch is landed and published, not inside the batch's COMMIT where
# DuckDB would: readers then see the batch without waiting for the checkpoint
# (docs/performance.md, "Checkpoints inside the cycle").
CHECKPOINT_WAL_BYTES = 16 * 1024 * 1024
# While a backlog lands (more records wait behind the batch), the log may grow to this size before
# the writer checkpoints it: a checkpoint has a large cost that does not shrink with the log, and
# a 50k-event batch's log alone passes 16 MB, so a backlog paid it after every batch. The batch
# that ends the backlog (and the close) checkpoints what is left (docs/performance.md,
# "Fewer checkpoints while a backlog lands").
BACKLOG_CHECKPOINT_WAL_BYTES = 128 * 1024 * 1024
_NO_AUTOMATIC_CHECKPOINT = "1TB"
_PID = re.compile(r"\(PID (\d+)\)")


def memory_limit_setting() -> str:
    """The memory limit to give DuckDB: ``MEMORY_LIMIT_ENV`` if set, read by DuckDB's own parser
    on a database in memory (so a size it cannot read fails before any file is created), else
    ``DEFAULT_MEMORY_LIMIT``."""
    limit = os.environ.get(MEMORY_LIMIT_ENV, "").strip()
    if not limit:
        return DEFAULT_MEMORY_LIMIT
    try:
        with duckdb.connect() as con:
            con.execute(f"SET memory_limit = {sql_literal(limit)}")
    except duckdb.Error as exc:
        raise StoreError(f"{MEMORY_LIMIT_ENV}={limit!r} is not a memory size DuckDB accepts (such as 512MB or 2GB): "
                         f"{str(exc).splitlines()[0]}") from None
    return limit


def main_tables(con: duckdb.DuckDBPyConnection) -> set[str]:
    """The names of the tables of ``con``'s own database (not of an attached replica)."""
    return {name for (name,) in con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() AND schema_name = 'main'").fetchall()}


def open_with_lock_retry(path: Path, read_only: bool, lock_timeout_s: float) -> duckdb.DuckDBPyConnection:
    """duckdb.connect, retried while another process holds the file's lock, up to the timeout.

    Gives up with one line naming the cause and, when DuckDB reports it, the holder's PID.
    """
    deadline = time.monotonic() + max(0.0, lock_timeout_s)
    pause = 0.05
    while True:
        try:
            if not read_only:
                path.parent.mkdir(parents=True, exist_ok=True)
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.IOException as exc:
            message = str(exc).splitlines()[0]
            if "lock" not in message.lower():
                raise StoreError(f"cannot open {path}: {message}") from None
            if time.monotonic() >= deadline:
                pid = _PID.search(message)
                holder = f"process {pid.group(1)}" if pid else "another process"
                raise StoreError(
                    f"{path} is in use by another process ({holder} holds its lock; DuckDB allows one writer), "
                    f"gave up after {lock_timeout_s:g}s (--lock-timeout)"
                ) from None
        except (duckdb.Error, OSError) as exc:
            raise StoreError(f"cannot open {path}: {str(exc).splitlines()[0]}") from None
        time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
        pause = min(pause * 2, 0.5)


# A touched customer's rows are read in two steps (Store._touched_rows): first the customer
# column alone, to learn which stretches of row ids hold them, then the rows of those stretches.
# A plain ``customer_id IN (...)`` is a join after the scan, so it reads every column the
# statement needs from the whole table (16 columns of 8.3M events: 0.6-0.8 s cold for 43,000
# rows); a constant range of row ids is pushed into the scan, which skips every row group
# outside it (0.15-0.2 s when those rows lie in one row group). A customer active now has its
# rows among the recent landings; one returning after months adds the row groups of its old
# rows; where every row group holds one, the first step is all the extra cost (the customer
# column of 8.3M events: about 0.1 s).
ROW_BLOCK = 122_880  # DuckDB's row group size: stretches closer than this are read as one
MAX_ROW_RANGES = 32  # a longer OR of ranges is not worth planning: the nearest ones are merged
# Below this many rows a table is read in one step: with a few row groups there is little to
# skip, and the first step would be a second scan of the same rows.
TWO_STEP_MIN_ROWS = 4 * ROW_BLOCK
# The tables whose touched rows are looked up: their names are put into SQL text as they are.
CUSTOMER_TABLES = frozenset({"events", "journeys", "journey_events", "journey_metrics", "journey_handoffs"})
# Ranges spanning more than this share of the table are not used: a scan with a wide range of row
# ids cost more than one without (1.08 s against 0.71 s for the 16 columns of 8.3M events, when a
# batch's returning customers have rows in every row group), so the table is read in one step.
WIDEST_RANGES_SHARE = 0.5
# A join's build side of up to this many distinct values is pushed into the scan of its probe side
# as a filter by DuckDB itself (its dynamic_or_filter_threshold: Store._filter_pushed_from_joins).
DUCKDB_PUSHED_FILTER_VALUES = 50
# Up to this many are pushed where a statement asks for it: the landed rows of a batch's
# redelivered events, read by row id. Past it, the rows lie in most row groups anyway (2,000 random
# rows of 8.3M took 0.39 s pushed, against 0.75 s for the whole table).
PUSHED_FILTER_MAX_VALUES = 10_000
# A journey's rows in these tables carry the batch id of its journeys row: a landing deletes and
# writes a journey's rows in all of them together, stamped with its own batch id, and a settled
# journey keeps them all as they were. So the touched customers' rows there are found by the
# batch ids of their journeys, which DuckDB's min-max indexes skip by: a constant list of ids is
# checked against every row group's range (Store._touched_by_journey_batch). Batch ids grow along
# every table, so a customer's rows lie in the row groups of the batches that wrote them, and
# the customer column is never read whole (journey_events.customer_id at 8.3M rows: 0.09 s).
BY_JOURNEY_BATCH = frozenset({"journey_events", "journey_metrics", "journey_handoffs"})
# More distinct batch ids than this (customers returning from all over a long history), and the
# rows are found by the customer column as for any other table: the list would touch most row
# groups anyway, and a long constant list is no longer pushed into the scan.
MAX_JOURNEY_BATCHES = 64
# After ranges that wide, the table is read in one step for this many batches without the first
# step (about 0.1 s at 8M rows), then looked up again: where a store's customers return after
# months, every batch would find the same.
ONE_STEP_BATCHES = 20


def row_ranges(stretches: list[tuple[int, int]], max_ranges: int = MAX_ROW_RANGES) -> list[tuple[int, int]]:
    """Merges (first, last) row id stretches into at most ``max_ranges`` sorted ranges that
    cover every one of them: stretches less than ``ROW_BLOCK`` apart are joined, then the two
    with the smallest gap until few enough are left. Pure, so it is tested on its own."""
    merged: list[list[int]] = []
    for first, last in sorted(stretches):
        if merged and first - merged[-1][1] <= ROW_BLOCK:
            merged[-1][1] = max(merged[-1][1], last)
        else:
            merged.append([first, last])
    while len(merged) > max(1, max_ranges):
        i = min(range(len(merged) - 1), key=lambda k: merged[k + 1][0] - merged[k][1])
        merged[i:i + 2] = [[merged[i][0], max(merged[i][1], merged[i + 1][1])]]
    return [(first, last) for first, last in merged]


def rowid_filter(ranges: list[tuple[int, int]]) -> str:
    """A SQL condition true for the row ids inside ``ranges`` (false for none)."""
    if not ranges:
        return "false"
    return "(" + " OR ".join(f"rowid BETWEEN {int(first)} AND {int(last)}" for first, last in ranges) + ")"


# Rows of journeys the batch recomputes: all of the touched customers' except the settled ones
# (Store._freeze_settled_journeys) the batch leaves as landed.
_NOT_FROZEN = "journey_id NOT IN (SELECT journey_id FROM batch_frozen)"
# The columns of a landed event the assembly reads (batch_history, beside at_us)
_HISTORY_COLUMNS = ("event_id, event_type, customer_id, ticket_id, chat_id, survey_id, channel, handler_type, "
                    "agent_id, team, status, author, outcome, csat, nps")
# A landed event (a row of events) of a settled journey: of a customer with settled journeys, and
# linked, as landed, to one of them ({links}: a condition on journey_events for the touched
# customers' links). Not "linked to a journey the batch recomputes": a landed event can have no
# link (a survey of a ticket with no events yet), and such an event is recomputed.
_SETTLED_EVENT = ("(customer_id IN (SELECT customer_id FROM batch_frozen) AND event_id IN ("
                  "SELECT event_id FROM journey_events WHERE {links} AND journey_id IN (SELECT journey_id FROM batch_frozen)))")
# event_id_digests.id_digest of an event_id column (sql/schema.sql)
_ID_DIGEST = "md5_number_lower(event_id)"
# A journey snapshot (Store._snapshot_before and _land_service_metrics, for journey_revisions): the journeys picked by {journeys} with their
# service metrics picked by {metrics}. Each side is filtered before the join: joining first
# built a hash table of the whole journey_metrics table (0.30 s at 1M journeys) and read every
# journey's columns before the customer filter.
_SNAPSHOT = """WITH j AS MATERIALIZED (SELECT * FROM journeys WHERE {journeys}),
                    m AS MATERIALIZED (SELECT * FROM journey_metrics WHERE {metrics})
               SELECT j.* EXCLUDE (updated_at, batch_id), m.* EXCLUDE (journey_id, customer_id, batch_id),
                      m.journey_id IS NOT NULL AS _has_metrics
               FROM j LEFT JOIN m ON m.journey_id = j.journey_id"""
# After landing: the rows this batch wrote (batch_id = ?, twice; DuckDB's min-max index on batch_id
# skips every row group landed before, so no scan of the whole tables) of the journeys whose ids
# were landed before (a journey landed for the first time is no revision).
_AFTER = {"journeys": "batch_id = ? AND journey_id IN (SELECT journey_id FROM revision_before)",
          "metrics": "batch_id = ?"}


def settled_prefix(journeys: list[tuple[str, str, int, int, int]], horizon_us: int) -> list[str]:
    """The ids of a customer's landed journeys that a batch cannot change (see
    Store._freeze_settled_journeys): the longest prefix, in order of start, of journeys that
    are not open and ended more than ``horizon_us`` before the cutoff, and whose events all
    precede the start of the first journey after the prefix.

    ``journeys``: (journey_id, status, started_at_us, last_event_at_us, earliest batch event
    of the customer in epoch us), sorted by start. Pure, so it is tested on its own."""
    if not journeys:
        return []
    latest = max(last for _, _, _, last, _ in journeys)
    cutoff = min(journeys[0][4], latest) - horizon_us
    count = 0
    for _, status, _, last, _ in journeys:
        if status == "open" or last >= cutoff:
            break
        count += 1
    while count > 0 and count < len(journeys):
        if max(last for _, _, _, last, _ in journeys[:count]) < journeys[count][2]:
            break
        count -= 1
    return [journey_id for journey_id, *_ in journeys[:count]]


def _ts(column: str) -> str:
    """Epoch microseconds -> TIMESTAMPTZ, independent of the session time zone."""
    return f"(make_timestamp({column}) AT TIME ZONE 'UTC')"


def _ms_ts(column: str) -> str:
    return f"(make_timestamp({column} * 1000) AT TIME ZONE 'UTC')"


class BatchNotAccounted(RuntimeError):
    """The staged output does not account for every record the batch read: nothing lands."""


@dataclass
class StagedFiles:
    """The files a batch's stages produced, by kind (an empty list is a kind with no rows)."""

    events: list[Path] = field(default_factory=list)
    copies: list[Path] = field(default_factory=list)
    dead: list[Path] = field(default_factory=list)
    journeys: list[Path] = field(default_factory=list)
    links: list[Path] = field(default_factory=list)
    jmetrics: list[Path] = field(default_factory=list)  # service metrics per journey
    handoffs: list[Path] = field(default_factory=list)  # every counted handoff


@dataclass
class BatchFacts:
    """What the driver knows about a batch before landing it."""

    batch_id: int
    started_at: datetime
    ranges: list[dict[str, Any]]  # {topic, partition, from, to}: what was really read (the manifests)
    reads: list[dict[str, Any]]  # the read manifests: {topic, partition, start, stop, records, ...}
    ingest_s: float
    assemble_s: float = 0.0
    attempt_id: Optional[int] = None

    @property
    def consumed(self) -> int:
        """Records read, from the read manifests (verified against the staged rows at landing)."""
        return sum(int(r["records"]) for r in self.reads)


@dataclass
class LandedBatch:
    batch_id: int
    consumed: int
    landed: int
    duplicates: int
    dead_letters: int
    customers_touched: int
    journeys_written: int
    duration_s: float
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class CopyResolution:
    """How the batch's winning copies compare with what landed before (Store.resolve_copies)."""

    staged: int  # event_ids in the batch
    new: int  # not landed before
    replacing: int  # landed before, and the batch's copy wins (the landed row is replaced)
    losing: int  # landed before, and the landed copy wins
    in_batch_losers: int  # losing copies within the batch


@dataclass
class Suspect:
    """A failed batch attempt whose offsets have not all landed: the next attempt shrinks."""

    attempt_id: int
    records: int  # offsets the failing attempt planned
    outcome: str  # failed | died | died_again
    error: str
    remaining: list[tuple[str, int, int, int]]  # (topic, partition, from, to) not landed yet

    @property
    def cap(self) -> int:
        """Offsets the next attempt may plan: the same after a first death, else half."""
        return self.records if self.outcome == "died" else max(1, self.records // 2)


class Store:
    """A writer connection to the journeys database."""

    def __init__(self, path: Path | str, read_only: bool = False,
                 lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S, lake: Optional[Any] = None,
                 writer_id: Optional[str] = None) -> None:
        self.path = Path(path)
        memory_limit = memory_limit_setting()  # before the file is opened: a bad size leaves no file behind
        self.con = open_with_lock_retry(self.path, read_only, lock_timeout_s)
        # The file we opened: DuckDB keeps writing to it through its descriptor even after it was
        # deleted or replaced, so every landing first checks the path still names this file.
        self.identity = _file_identity(self.path) if self.path.name != ":memory:" else None
        self.con.execute("SET TimeZone = 'UTC'")
        # DuckDB draws a progress bar on stdout during any statement longer than 2 s (an upgrade
        # of a large store, a checkpoint), also when stdout is a pipe or a file; the store's own
        # log lines say what it is doing. Connections made from this one (the replica's) inherit it.
        self.con.execute("SET enable_progress_bar = false")
        # for this database and the connections made from it (the replica's)
        self.con.execute(f"SET memory_limit = {sql_literal(memory_limit)}")
        # DuckDB keeps what it reads of Parquet files in a cache of its own, and its bookkeeping
        # per file (malloc'd, outside the memory limit) until the database closes. Every batch
        # reads new staged files once and removes them, so a long run held more of it with every
        # batch: over 400k events an open store gained 17 MB of memory in use with it, 7 MB
        # without (docs/performance.md, "Native memory held for Parquet files read once").
        self.con.execute("SET enable_external_file_cache = false")
        # DuckDB's threads as chosen at open (one per core), and as set now (fit_threads)
        self._usual_threads = self._threads = int(self.con.execute("SELECT current_setting('threads')").fetchone()[0])
        # whether another process of this run works on this machine's other core now (the
        # runner's worker, pipelines/local/ingest_ahead.py): the landing then runs on one thread
        self.other_process_busy: Callable[[], bool] = lambda: False
        # fingerprints of the records at the ends of the planned ranges, keyed by
        # (topic, partition, end of range); landed with the offsets (see _advance_offsets)
        self.pending_fingerprints: dict[tuple[str, int, int], Fingerprint] = {}
        # per customer, the landed journeys the last batch left as they were (settled, see
        # _freeze_settled_journeys): reported with the batch, and read by tests
        self.settled_journeys: dict[str, int] = {}
        self.replica = None  # DuckLake read replica, published after landed batches (pipelines/storage/replica.py)
        self._publish_due = False  # a landed batch is not published yet (deferred while a backlog is read)
        self._published_at = float("-inf")  # time.monotonic() of the last publish
        # per batch, by table: the touched customers' row id ranges and the table's row count
        # when they were looked up (_touched_rows)
        self._found_rows: dict[str, tuple[str, int]] = {}
        self._batch_id: Optional[int] = None  # the batch resolve_copies began (its rows carry this id)
        self._journey_batches: Optional[list[int]] = None  # batch ids of the touched customers' journeys
        self._null_batch_links: Optional[bool] = None  # journey_events holds a row without a batch id
        self._events_at_lookup: Optional[int] = None  # rows of events when landed copies were looked up
        self._history_read = False  # export_history filled batch_history for the batch resolve_copies began
        self._read_before: Optional[tuple[int, int]] = None  # (batch id, journeys) read by read_before_landing
        self._one_step_left: dict[str, int] = {}  # by table: batches still read in one step
        self._compared_columns: Optional[list["ValueColumn"]] = None  # what revisions compare (_revision_columns)
        if not read_only:
            self.con.execute(f"SET checkpoint_threshold = '{_NO_AUTOMATIC_CHECKPOINT}'")
            try:
                self.apply_schema()
            except StoreError:  # a broken model file (pipelines/storage/models.py): already one line
                _close_quietly(self.con)
                raise
            except (duckdb.Error, OSError) as exc:  # e.g. a full disk: the views are written at every start
                _close_quietly(self.con)
                raise StoreError(f"cannot prepare the tables and views in {self.path}: {str(exc).splitlines()[0]}") from None
            self._checkpoint_if_due()  # an upgrade at open (e.g. _stamp_journey_events) may write a large log
            try:  # lake: a shared lake to publish to instead of the local replica (storage/shared_lake.py)
                self.replica = open_writer_replica(self.con, self.path, lake, writer_id)
            except ReplicaError as exc:
                _close_quietly(self.con)
                raise StoreError(f"cannot publish to the shared lake: {exc}") from None

    def publish_pending(self) -> None:
        """Publishes the landed batches whose publish was deferred (one publish covers them all);
        never fails the caller: a failed publish is retried by the next one."""
        if self.replica is not None and self._publish_due:
            self.fit_threads()
            self.replica.after_land()
            self._published_at = time.monotonic()
        self._publish_due = False

    def _checkpoint_if_due(self, backlog_left: bool = False) -> None:
        """Checkpoints once the write-ahead log holds CHECKPOINT_WAL_BYTES, or
        BACKLOG_CHECKPOINT_WAL_BYTES while a backlog lands (``backlog_left``). A failed
        checkpoint loses nothing (the log keeps every committed batch) and is tried again after
        the next."""
        try:
            wal_bytes = os.stat(f"{self.path}.wal").st_size
        except OSError:  # no log: nothing written since the last checkpoint
            return
        if wal_bytes < (BACKLOG_CHECKPOINT_WAL_BYTES if backlog_left else CHECKPOINT_WAL_BYTES):
            return
        try:
            self.con.execute("CHECKPOINT")
        except duckdb.Error as exc:
            log.warning("%s: checkpoint of a %d-byte write-ahead log failed, tried again after the next batch: %s",
                        self.path, wal_bytes, str(exc).splitlines()[0])

    def close(self) -> None:
        self.other_process_busy = lambda: False  # the runner that set it has stopped its worker
        if self.replica is not None:
            self.publish_pending()  # what landed is what readers see once the writer has stopped
            self.replica.close()
        self.fit_threads()  # the checkpoint at close on every core
        try:
            self.con.close()
        except duckdb.Error:  # e.g. a database invalidated by a failed write: the cause was reported already
            pass

    def verify_file(self, batch_id: Optional[int] = None) -> None:
        """Raises StoreError when the path no longer names the file this store writes into.

        Without this check a deleted database keeps "landing" batches into an unlinked file that
        vanishes when the process exits, and the run reports success.
        """
        if self.identity is None:
            return
        now = _file_identity(self.path)
        if now == self.identity:
            return
        what = "deleted" if now is None else "replaced by another file"
        lost = f"; batch {batch_id} went into the {'deleted' if now is None else 'old'} file and is not kept" \
            if batch_id is not None else ""
        raise StoreError(f"the database file {self.path} was {what} while this run had it open{lost}; "
                         "stopping so that nothing more is landed where no one can read it")

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- schema

    def apply_schema(self) -> None:
        """Landing tables (sql/schema.sql), then the model views of sql/models and the column
        comments from their YAML docs (pipelines/storage/models.py), in one transaction."""
        from pipelines.storage.models import ModelError, catalog_statements

        try:
            statements = catalog_statements()
        except ModelError as exc:  # a broken model or YAML file: one line naming it, nothing applied
            raise StoreError(f"cannot create the views from sql/models: {exc}") from None
        self._drop_events_key()
        self.con.execute(SCHEMA_SQL.read_text())
        self._stamp_journey_events()
        self._digest_event_ids()
        self._map_event_blocks()
        _in_one_transaction(self.con, statements)

    def _upgrade_in_one_transaction(self, doing: str, done: str, statements: list[str],
                                    why: str = "the store was created by an earlier version") -> None:
        """A change to the tables at open, such as the upgrade of a store made by an earlier
        version (``why`` says which): all of it, or (on any failure) none; logged before (it may
        take a while on a large store) and after, with its time."""
        started = time.perf_counter()
        log.info("%s: %s (%s)", self.path, doing, why)
        _in_one_transaction(self.con, statements)
        log.info("%s: %s in %.1fs", self.path, done, time.perf_counter() - started)

    def _drop_events_key(self) -> None:
        """A store created with a primary key on events.event_id is rebuilt without it, once.

        Why: DuckDB writes a key's whole index again at every checkpoint, so each checkpoint
        cost time in proportion to every event ever landed (about 0.5 s per million random
        ids), and the index took about 190 MB per million on disk (docs/performance.md, "The
        events table without a key"). The landing keeps an event from landing twice by itself
        (``_check_lookup_holds``). DuckDB cannot drop a primary key, so the table is copied into
        a new one, rows in their order, in one transaction: a failure leaves the keyed table as it was.
        """
        try:
            keyed = [row[1] for row in self.con.execute("PRAGMA table_info('events')").fetchall() if row[5]]
        except duckdb.CatalogException:  # a new store: the schema creates the table without the key
            return
        if not keyed:
            return
        events = self.count("events")
        self._upgrade_in_one_transaction(
            f"rebuilding the events table without its primary key: copying {events} events",
            "rebuilt the events table without its primary key", [
                "ALTER TABLE events RENAME TO events_keyed",
                SCHEMA_SQL.read_text(),  # creates events as the schema has it now
                "INSERT INTO events BY NAME SELECT * FROM events_keyed ORDER BY rowid",
                "DROP TABLE events_keyed",
                # the copy may number the rows anew: a map of their blocks no longer holds
                # (_map_event_blocks builds it again next)
                "DELETE FROM customer_event_blocks_covered",
            ])

    def _stamp_journey_events(self) -> None:
        """A store created before journey_events had a batch_id column gains it, filled in.

        Why it is there: the replica publish copies a changed journey's rows from the batches
        it has not published yet, and with the batch id DuckDB skips every older row group
        instead of scanning the whole table (docs/performance.md, "The links carry their
        batch"). Why the fill is exact: a batch deletes and re-inserts a recomputed journey's
        journeys row and its journey_events rows together, so each link was last written by
        its journey's batch.
        """
        columns = {row[1] for row in self.con.execute("PRAGMA table_info('journey_events')").fetchall()}
        if "batch_id" in columns:
            return
        links = int(self.con.execute("SELECT count(*) FROM journey_events").fetchone()[0])
        self._upgrade_in_one_transaction(
            f"adding journey_events.batch_id: filling {links} links from their journeys",
            "added journey_events.batch_id, filled from journeys", [
                "ALTER TABLE journey_events ADD COLUMN batch_id BIGINT",
                "UPDATE journey_events SET batch_id = j.batch_id FROM journeys j WHERE j.journey_id = journey_events.journey_id",
            ])

    def _digest_event_ids(self) -> None:
        """Fills event_id_digests from events when the two differ in rows: a store made before
        the table existed, or events written by something other than the landing (the landing
        writes both in one transaction, and ``_check_lookup_holds`` refuses a batch when they
        differ). Rebuilt whole, so a missing or extra digest cannot survive it."""
        events, digests = self.count("events"), self.count("event_id_digests")
        if events == digests:
            return
        self._upgrade_in_one_transaction(
            f"digesting the ids of {events} events", "digested the event ids", [
                "DROP TABLE event_id_digests",
                SCHEMA_SQL.read_text(),  # creates it empty
                f"INSERT INTO event_id_digests SELECT {_ID_DIGEST} FROM events",
            ], why=f"the events table holds {events} rows and event_id_digests {digests}")

    def _map_event_blocks(self) -> None:
        """Builds customer_event_blocks from events when it does not cover the table: a store
        made before the map existed, events written by something other than the landing, or
        the table rebuilt (``_drop_events_key``). Built whole, so a stale pair cannot survive."""
        from pipelines.storage.event_blocks import covered_rows, rebuild_statements

        events, covered = self.count("events"), covered_rows(self.con, ROW_BLOCK)
        if covered == events:
            return
        self._upgrade_in_one_transaction(
            f"mapping the customers of {events} events to their row blocks", "mapped the customers' row blocks",
            rebuild_statements(ROW_BLOCK),
            why=f"the map covers {covered if covered is not None else 'no'} rows of {events}")

    # ---------------------------------------------------------------- reads

    def landed_offsets(self) -> dict[tuple[str, int], int]:
        rows = self.con.execute('SELECT topic, "partition", next_offset FROM pipeline_offsets').fetchall()
        return {(t, p): o for t, p, o in rows}

    def source_fingerprints(self) -> dict[tuple[str, int], Fingerprint]:
        """The last landed record of each partition, as stored with its offset."""
        rows = self.con.execute(
            'SELECT topic, "partition", record_offset, kafka_timestamp_ms, digest FROM source_fingerprints'
        ).fetchall()
        return {(t, p): Fingerprint(offset=o, timestamp_ms=ts, digest=d) for t, p, o, ts, d in rows}

    def next_batch_id(self) -> int:
        return int(self.con.execute("SELECT coalesce(max(batch_id), 0) + 1 FROM pipeline_batches").fetchone()[0])

    def count(self, table: str) -> int:
        if table not in {"events", "journeys", "journey_events", "dead_letters", "pipeline_batches", "event_conflicts",
                         "duplicate_deliveries", "batch_attempts", "event_id_digests"}:
            raise ValueError(f"unknown table {table!r}")
        return int(self.con.execute(f"SELECT count(*) FROM {table}").fetchone()[0])

    # ---------------------------------------------------------------- batch steps

    def _load_staged(self, name: str, files: list[Path], schema: "pa.Schema", batch_id: int) -> None:
        """A temp table from staged Parquet files; unreadable or short files fail the batch."""
        self.con.execute(f"DROP TABLE IF EXISTS {name}")
        for directory in {f.parent for f in files}:
            if not directory.is_dir():  # the batch files directory was removed under the batch
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(directory))
        if files:
            source = "read_parquet([" + ", ".join(sql_literal(str(f)) for f in files) + "])"
            try:
                self.con.execute(f"CREATE TEMP TABLE {name} AS SELECT * FROM {source}")
            except duckdb.OutOfMemoryException:
                raise  # not the file's fault: the batch is halved, and a single record is not blamed
            except duckdb.Error as exc:
                raise BatchNotAccounted(
                    f"batch {batch_id}: a staged {name.removeprefix('staged_')} file is missing or unreadable: "
                    f"{str(exc).splitlines()[0][:300]}"
                ) from None
            columns = [row[0] for row in self.con.execute(f"DESCRIBE {name}").fetchall()]
            if columns != schema.names:
                raise BatchNotAccounted(f"batch {batch_id}: staged {name.removeprefix('staged_')} files have columns {columns}, "
                                        f"expected {schema.names}")
        else:
            import pyarrow as pa

            self._temp_from_arrow(name, pa.Table.from_pylist([], schema=schema))

    def resolve_copies(self, staged: StagedFiles, batch_id: int) -> CopyResolution:
        """Loads the staged ingest output and decides, per event_id, which copy wins.

        A batch's winning copy replaces a landed row when it is smaller by the copy order
        (content hash, then Kafka coordinates; transforms.dedup). The landed row's hash is
        computed from its stored payload, so nothing about the rule is stored twice.
        Leaves temp tables batch_events (rows to insert or to replace with), batch_resolution
        and batch_customers (whose journeys the batch recomputes) for the next steps.
        """
        from transforms.batch_files import COPY_SCHEMA, DEAD_LETTER_SCHEMA, EVENT_SCHEMA
        from transforms.dedup import payload_hash

        self._start_lookups()
        self._batch_id = batch_id
        self._history_read = False
        self._read_before = None
        self._load_staged("staged_events", staged.events, EVENT_SCHEMA, batch_id)
        self._load_staged("staged_copies", staged.copies, COPY_SCHEMA, batch_id)
        self._load_staged("staged_dead", staged.dead, DEAD_LETTER_SCHEMA, batch_id)
        con = self.con
        landed_copies = self._landed_copies()
        resolution = []
        for (event_id, new_hash, topic, partition, offset, payload, old_topic, old_partition, old_offset, old_customer,
             landed_row) in landed_copies:
            old_hash = payload_hash(payload)
            replaces = (new_hash, topic, partition, offset) < (old_hash, old_topic, old_partition, old_offset)
            resolution.append({"event_id": event_id, "old_hash": old_hash, "new_hash": new_hash,
                               "replaces": replaces, "old_customer": old_customer, "landed_row": landed_row})
        import pyarrow as pa

        self._temp_from_arrow("batch_resolution", pa.Table.from_pylist(resolution, schema=pa.schema(
            [("event_id", pa.string()), ("old_hash", pa.string()), ("new_hash", pa.string()),
             ("replaces", pa.bool_()), ("old_customer", pa.string()), ("landed_row", pa.int64())])))
        self._temp_from_query(
            "batch_events",
            """SELECT s.*, r.event_id IS NULL AS is_new FROM staged_events s LEFT JOIN batch_resolution r USING (event_id)
               WHERE r.event_id IS NULL OR r.replaces""")
        self._temp_from_query(
            "batch_customers",
            """SELECT customer_id FROM batch_events
               UNION SELECT old_customer FROM batch_resolution WHERE replaces""")
        self._clear_frozen()
        replacing = sum(1 for r in resolution if r["replaces"])
        return CopyResolution(
            staged=int(con.execute("SELECT count(*) FROM staged_events").fetchone()[0]),
            new=int(con.execute("SELECT count(*) FROM batch_events WHERE is_new").fetchone()[0]),
            replacing=replacing,
            losing=len(resolution) - replacing,
            in_batch_losers=int(con.execute("SELECT count(*) FROM staged_copies").fetchone()[0]),
        )

    def _start_lookups(self) -> None:
        """A new batch: forget the last one's ranges, and count down the tables read in one step."""
        self._found_rows = {}
        self._journey_batches = None
        self._one_step_left = {table: left - 1 for table, left in self._one_step_left.items() if left > 1}

    def _touched_rows(self, table: str, again: bool = False) -> str:
        """A SQL condition on ``table`` for the rows of the customers the batch touched
        (batch_customers), by the stretches of row ids that hold them (see ``ROW_BLOCK``).

        The stretches are looked up now and remembered for the batch. ``again``: reuse the ones
        this batch looked up before, widened by every row id from the table's row count then
        on wherever a row may have been written since (``_rows_written_since``). That keeps the
        condition whole whatever happened since: a row appended or rewritten
        since (in this transaction or before) has a row id at least that count, and rows only
        change customer between customers the batch touched (a winning copy moves its event
        from one touched customer to another). Saves a scan of the customer column of a table
        the batch read before (0.04-0.1 s at 8M rows)."""
        if table not in CUSTOMER_TABLES:
            raise ValueError(f"no touched rows are looked up in table {table!r}")
        customers = "customer_id IN (SELECT customer_id FROM batch_customers)"
        if table in BY_JOURNEY_BATCH:
            by_batch = self._touched_by_journey_batch(table)
            if by_batch:
                return f"{by_batch} AND {customers}"
        if again and table in self._found_rows:
            ranges, appended_from = self._found_rows[table]
            return f"({ranges}{self._rows_written_since(table, appended_from)}) AND {customers}" if ranges else customers
        # (DuckDB answers count(*) of a whole table from its metadata)
        appended_from = int(self.con.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
        ranges, mapped = "", False  # one step: a small table, or rows in most of its row groups
        if appended_from >= TWO_STEP_MIN_ROWS and table not in self._one_step_left:
            stretches, mapped = self._touched_stretches(table, customers, appended_from)
            found = row_ranges(stretches)
            if sum(last - first + 1 for first, last in found) <= WIDEST_RANGES_SHARE * appended_from:
                ranges = rowid_filter(found)
            else:
                self._one_step_left[table] = ONE_STEP_BATCHES
        self._found_rows[table] = (ranges, appended_from)
        if ranges and mapped:
            # a map knows only the rows it covers: rows added since, in this transaction too
            # (their row ids are far past the count until it commits), lie past the count, as
            # for ranges reused
            return f"({ranges}{self._rows_written_since(table, appended_from)}) AND {customers}"
        return f"{ranges} AND {customers}" if ranges else customers

    def _rows_written_since(self, table: str, rows_then: int) -> str:
        """`` OR rowid >= rows_then``: the clause that widens row id ranges looked up when
        ``table`` held ``rows_then`` rows to every row written since (rows added in an open
        transaction have ids far past the count until it commits, whenever they were looked up).

        Left out for ``events`` outside a transaction while it still holds ``rows_then`` rows:
        its rows are never deleted, an update keeps a row's id, and this process is its only
        writer, so no row was written since. The reads before the landing (the history read,
        the settled journeys' check) then keep plain ranges, which DuckDB turns into the row
        groups to scan; with the clause, every row group's ids are compared, and the growth
        benchmark's history read took 0.079 s against 0.031 s (docs/performance.md, "Ranges
        not widened before the landing"). Other tables keep the clause: a landing deletes and
        rewrites their rows, so an unchanged count says nothing."""
        if table == "events" and self.count(table) == rows_then and not self._in_transaction():
            return ""
        return f" OR rowid >= {int(rows_then)}"

    def _in_transaction(self) -> bool:
        """Whether this connection has a transaction open: outside one, each statement runs in
        a transaction of its own, so two in a row see two ids."""
        first = self.con.execute("SELECT txid_current()").fetchone()[0]
        return bool(first == self.con.execute("SELECT txid_current()").fetchone()[0])

    def _touched_by_journey_batch(self, table: str) -> str:
        """A condition on the batch_id of ``table`` (one of BY_JOURNEY_BATCH) that holds every
        row of the touched customers: the batch ids of their journeys rows (looked up once per
        batch, before the landing rewrites any), and this batch's own id (the rows its landing
        writes, so the condition stays whole inside the landing transaction). Empty when there
        are more than MAX_JOURNEY_BATCHES of them, when no batch was begun, or for links without
        a batch id (written before links carried one, when their journey row was already gone):
        ``OR batch_id IS NULL`` would cost most of what the list saves, so such a store is read
        by the customer column."""
        if self._batch_id is None or (table == "journey_events" and self._links_without_batch()):
            return ""
        if self._journey_batches is None:
            rows = self.con.execute(
                f"SELECT DISTINCT batch_id FROM journeys WHERE {self._touched_rows('journeys', again=True)} "
                f"LIMIT {MAX_JOURNEY_BATCHES + 1}").fetchall()
            self._journey_batches = [int(batch_id) for (batch_id,) in rows]
        if len(self._journey_batches) > MAX_JOURNEY_BATCHES:
            return ""
        ids = ", ".join(str(batch_id) for batch_id in sorted({*self._journey_batches, int(self._batch_id)}))
        return f"batch_id IN ({ids})"

    def _previous_journey_batches(self, batch_id: int) -> Optional[list[int]]:
        """After landing ``batch_id``: the batch ids its touched customers' journeys (and so
        their links, metrics and handoffs) had before it (a superset of those it rewrote or
        removed, for the replica's deletes: Replica.note_rewritten), or None when they were not
        looked up whole: more than MAX_JOURNEY_BATCHES of them, a link without a batch id, or a
        landing that did not begin with resolve_copies of this batch."""
        batches = self._journey_batches
        if (self._batch_id != batch_id or batches is None or len(batches) > MAX_JOURNEY_BATCHES
                or self._links_without_batch()):
            return None
        return batches

    def _links_without_batch(self) -> bool:
        """Whether journey_events holds a row without a batch id (looked up once: landings never
        write one; DuckDB skips every row group whose statistics say it has no NULL)."""
        if self._null_batch_links is None:
            self._null_batch_links = self.con.execute(
                "SELECT count(*) > 0 FROM journey_events WHERE batch_id IS NULL").fetchone()[0]
        return bool(self._null_batch_links)

    def _touched_stretches(self, table: str, customers: str, rows: int) -> tuple[list[tuple[int, int]], bool]:
        """(first, last) row ids of stretches that hold the rows of ``table`` the ``customers``
        condition picks, ``rows`` being the table's row count; and whether they came from a map
        that covers only the rows below that count.

        For events, from the map of the customers' row blocks when it covers the table
        (pipelines/storage/event_blocks.py): a look-up in a table about a seventh of its size.
        Otherwise by reading the customer column of the whole table, each stretch as narrow as
        the rows found in one block (those rows' own ids, so rows added in the open transaction too)."""
        from pipelines.storage.event_blocks import blocks_of_batch_customers, covered_rows

        if table == "events" and covered_rows(self.con, ROW_BLOCK) == rows:
            return [(block * ROW_BLOCK, block * ROW_BLOCK + ROW_BLOCK - 1)
                    for block in blocks_of_batch_customers(self.con)], True
        return self.con.execute(
            f"SELECT min(rowid), max(rowid) FROM {table} WHERE {customers} GROUP BY rowid // {ROW_BLOCK}").fetchall(), False

    def _landed_copies(self) -> list[tuple[Any, ...]]:
        """(staged event_id, content_hash, topic, partition, offset, then the landed row's
        payload, source topic, partition, offset, customer_id and row id) for each staged event
        whose event_id is landed already.

        This look-up is what keeps an event from landing twice: ``events`` has no key
        (docs/performance.md, "The events table without a key"), and the landing checks that
        nothing was added to the table since (``_check_lookup_holds``). Two steps, so a batch of
        new events reads neither an event_id string nor a payload: a semi-join on the 64-bit
        digests of the landed ids (event_id_digests) finds the staged ids that may be landed
        (0.05 s against 8.3M digests, where the same semi-join on the event_id strings took
        0.15 s: docs/performance.md, "Looking up landed events by digest"), then only those
        rows are read, by their full ids. One join that read them whole spent 0.9 s of a
        5,000-event batch on a store of 8M events, though none was landed.

        Those rows are read in two steps too (``_rows_of_landed_ids``): their row ids from the
        event_id column alone, then the rows by row id. Read by event_id in one statement, every
        column the look-up returns was read from the whole table (the payloads decompressed
        whole): 0.81 s of a batch with 50 redelivered events on a store of 8.3M events."""
        con = self.con
        # (DuckDB answers count(*) of a whole table from its metadata; duckdb_tables() would
        # also open the catalog of the attached replica, which may be gone)
        self._events_at_lookup = self.count("events")
        looked_up = con.execute(
            f"""SELECT event_id FROM staged_events WHERE {_ID_DIGEST} IN (
                    SELECT id_digest FROM event_id_digests WHERE id_digest IN (SELECT {_ID_DIGEST} FROM staged_events))""")
        candidates = [row[0] for row in looked_up.fetchall()]  # landed, or a digest shared by chance
        if not candidates:
            return []
        rows = self._rows_of_landed_ids(candidates)
        with self._filter_pushed_from_joins(rows):
            return con.execute(
                """SELECT s.event_id, s.content_hash, s.topic, s."partition", s."offset",
                          e.payload, e.source_topic, e.source_partition, e.source_offset, e.customer_id, e.landed_row
                   FROM staged_events s JOIN (SELECT *, rowid AS landed_row FROM events
                                              WHERE rowid IN (SELECT landed_row FROM landed_id_rows)) e USING (event_id)"""
            ).fetchall()

    def _rows_of_landed_ids(self, event_ids: list[str]) -> int:
        """Fills the temp table landed_id_rows with the row ids of the events rows whose
        event_id is one of ``event_ids``, reading no other column; returns how many."""
        ids = ", ".join(sql_literal(event_id) for event_id in event_ids)
        self._temp_from_query("landed_id_rows", f"SELECT rowid AS landed_row FROM events WHERE event_id IN ({ids})")
        return int(self.con.execute("SELECT count(*) FROM landed_id_rows").fetchone()[0])

    def fit_threads(self) -> int:
        """Sets DuckDB's threads for this database (the replica's connection too) and returns
        them: one while ``other_process_busy()`` says the run's second process works on the
        other core, the number DuckDB chose at open otherwise. A second DuckDB thread would only
        take that core from the worker: over a 202k-event backlog this process used 11.3 CPU s
        instead of 14.7-15.2, and the run finished sooner (docs/performance.md, "One DuckDB
        thread while the worker works"). The landing asks again before each of its parts. Never
        fails the caller: a database a failed write invalidated keeps the threads it had (the
        failure is reported where it happened)."""
        threads = 1 if self.other_process_busy() else self._usual_threads
        if threads != self._threads:
            try:
                self.con.execute(f"SET threads = {int(threads)}")
            except duckdb.Error:
                log.debug("%s: could not set DuckDB's threads to %d", self.path, threads, exc_info=True)
                return self._threads
            self._threads = threads
        return threads

    @contextmanager
    def _filter_pushed_from_joins(self, build_rows: int) -> Iterator[None]:
        """Meanwhile, a join whose build side holds up to ``build_rows`` distinct values (at
        most PUSHED_FILTER_MAX_VALUES) has them pushed into the scan of its probe side as a
        filter, so the scan reads the other columns of the matching rows only. DuckDB does so
        for up to 50 values (its dynamic_or_filter_threshold); on row ids, 400 values took 0.06 s
        against 0.72 s for the join alone at 8.3M events
        (docs/performance.md, "Redelivered events read by row id"). ``SET`` changes it for this
        connection only (a cursor of the same database still reads 50)."""
        values = min(max(int(build_rows), DUCKDB_PUSHED_FILTER_VALUES), PUSHED_FILTER_MAX_VALUES)
        if values == DUCKDB_PUSHED_FILTER_VALUES:
            yield
            return
        self.con.execute(f"SET dynamic_or_filter_threshold = {int(values)}")
        try:
            yield
        finally:
            self.con.execute("RESET dynamic_or_filter_threshold")

    def _check_lookup_holds(self, batch_id: int) -> None:
        """Inside the landing transaction, before its events are inserted: the look-up of landed
        copies (``_landed_copies``) still describes the table, i.e. it holds as many rows as
        then (rows are never deleted from it, and this process is its only writer). With the
        look-up itself, this is what the primary key on event_id used to enforce: no event
        lands twice. An event named twice by the batch itself fails the accounting check
        (``_check_accounting``). The look-up reads event_id_digests, so that table must hold a
        digest for every row of events (it is written in the same transaction). The counts
        come from the tables' metadata, where the key's index cost every checkpoint time in
        proportion to the whole table."""
        stored, digests = self.count("events"), self.count("event_id_digests")
        if self._events_at_lookup is None:
            broken = "no look-up of landed copies was made"
        elif stored != self._events_at_lookup:
            broken = (f"the events table holds {stored} rows, {self._events_at_lookup} when the batch looked up "
                      "which of its events were landed already; that look-up no longer holds")
        elif digests != stored:
            broken = (f"the events table holds {stored} rows but event_id_digests {digests}, so the look-up by "
                      "digest cannot be trusted; the next start rebuilds the digests")
        else:
            return
        raise StoreError(f"landing batch {batch_id} into {self.path} failed, nothing of it was kept "
                         f"(offsets unchanged): {broken}")

    def export_history(self, target: Path, partitions: int = 8, horizon_s: Optional[float] = None) -> int:
        """Writes the events of the customers the batch touched (old and new, with replaced rows
        in their new version) for assembly, partitioned by a hash of customer_id so each
        customer's events share one file. Returns how many events it wrote (what assembly's
        work grows with; 0: nothing to assemble).

        With ``horizon_s`` (the longest look-back of any journey rule: the repeat window, the
        durable-resolution and repeat-contact windows), the events of journeys that can no
        longer change are left out (``_freeze_settled_journeys``); their rows stay as landed.
        Without it, every touched customer's whole history is exported.
        """
        customers = int(self.con.execute("SELECT count(*) FROM batch_customers").fetchone()[0])
        if customers == 0:
            return 0
        # The touched customers' landed events that the batch recomputes, read from the events
        # table once (two scans of a store of 8M events cost 0.7-0.8 s each). The settled
        # journeys' events are left out as they are read: copying them into this table cost more
        # than reading them (0.10 of 0.13 s for a customer with 200k events).
        if horizon_s is not None and self._freeze_settled_journeys(int(round(horizon_s * 1_000_000))):
            self._read_history_around_settled()
        else:
            self._temp_from_query(
                "batch_history", f"SELECT {_HISTORY_COLUMNS}, epoch_us(occurred_at) AS at_us {self._landed_history()}")
        self._history_read = True
        query = f"""
            SELECT {_HISTORY_COLUMNS}, at_us FROM batch_events
            UNION ALL
            SELECT {_HISTORY_COLUMNS}, at_us FROM batch_history
        """
        partitioned = f"SELECT *, hash(customer_id) % {int(partitions)} AS part FROM ({query})"
        written = self.con.execute(
            f"COPY ({partitioned}) TO {sql_literal(str(target))} (FORMAT parquet, PARTITION_BY (part), OVERWRITE_OR_IGNORE)"
        ).fetchone()
        return int(written[0]) if written else 0

    def _landed_history(self) -> str:
        """``FROM events WHERE ...``: the touched customers' landed events, less those the batch
        lands again (their batch version is in batch_events): the rows the history is read from,
        with or without settled journeys."""
        return (f"FROM events WHERE {self._touched_rows('events', again=True)} "
                "AND event_id NOT IN (SELECT event_id FROM batch_events)")

    def _read_links(self) -> None:
        """Inside the landing, before it rewrites the links: fills batch_links with the touched
        customers' landed links of the journeys the batch recomputes, for the revisions
        statement (its only reader). Made after the settled journeys are decided, so a
        customer's settled links are never copied (200k rows, 0.05 s, for a customer with 200k
        settled events). The history's read cannot use them to pick the events it keeps: a
        landed event can have no link (a survey of a ticket not seen yet) and is read all the
        same."""
        self._temp_from_query(
            "batch_links",
            f"""SELECT event_id, journey_id, customer_id FROM journey_events
                WHERE {self._touched_rows('journey_events', again=True)} AND {_NOT_FROZEN}""")

    # ---------------------------------------------------------------- settled journeys

    def _clear_frozen(self) -> None:
        """Empty frozen sets: by default every touched customer's journeys are recomputed."""
        con = self.con
        self.settled_journeys = {}
        con.execute("DROP TABLE IF EXISTS batch_frozen")
        con.execute("CREATE TEMP TABLE batch_frozen (journey_id VARCHAR, customer_id VARCHAR)")

    def _freeze_settled_journeys(self, horizon_us: int) -> int:
        """Fills batch_frozen with the landed journeys of touched customers that this batch
        cannot change (their events, by their landed links, are left as landed). Returns how
        many journeys.

        Journeys are formed by one pass over a customer's threads in order of their start, and
        every rule looks back at most ``horizon_us`` (a new thread joins the latest journey if it
        ended at most the repeat window before; durability and repeat contact look 7 days past a
        resolution; "now" is the customer's latest event). So a customer's journeys can be split
        into a settled prefix and the rest, and only the rest is recomputed, when all hold:

        * the prefix (in order of start) holds only journeys that are not open and whose last
          event lies more than ``horizon_us`` before both the batch's earliest event of that
          customer and the customer's latest landed journey event;
        * every event of the prefix lies before the start of the first journey after it (so
          the pass over the rest never looks back into the prefix);
        * no event of the batch names a ticket or chat that an event of the prefix names
          (it would extend, link to or move a survey of a settled thread): checked as the
          history is read (``_read_history_around_settled``), which takes such a customer out
          of batch_frozen again;
        * no event of that customer is replaced by a conflicting copy in this batch (the old
          version's time is not bounded).
        Otherwise the customer's whole history is recomputed. Results are identical either way
        (tests/test_history_pruning.py compares against whole-history runs).
        """
        con = self.con
        self._clear_frozen()
        rows = con.execute(
            f"""WITH earliest AS (
                   SELECT customer_id, min(at_us) AS first_new_us FROM batch_events GROUP BY customer_id
               ), risky AS (
                   SELECT customer_id FROM batch_events WHERE NOT is_new
                   UNION SELECT old_customer FROM batch_resolution WHERE replaces
               )
               SELECT j.customer_id, j.journey_id, j.status, epoch_us(j.started_at), epoch_us(j.last_event_at),
                      n.first_new_us
               FROM (SELECT * FROM journeys WHERE {self._touched_rows('journeys', again=True)}) j JOIN earliest n USING (customer_id)
               WHERE j.customer_id NOT IN (SELECT customer_id FROM risky)
               ORDER BY j.customer_id, j.started_at, j.journey_id"""
        ).fetchall()
        by_customer: dict[str, list[tuple[str, str, int, int, int]]] = {}
        for customer_id, journey_id, status, started_us, last_us, first_new_us in rows:
            by_customer.setdefault(customer_id, []).append((journey_id, status, started_us, last_us, first_new_us))
        frozen: list[tuple[str, str]] = []
        for customer_id, journeys in by_customer.items():
            frozen.extend((journey_id, customer_id) for journey_id in settled_prefix(journeys, horizon_us))
        if not frozen:
            return 0
        import pyarrow as pa

        self._temp_from_arrow("batch_frozen", pa.table(
            {"journey_id": [j for j, _ in frozen], "customer_id": [c for _, c in frozen]}))
        return len(frozen)

    def _read_history_around_settled(self) -> None:
        """Fills batch_history with the touched customers' landed events outside their settled
        journeys (batch_frozen), and recomputes whole every customer whose settled journeys
        are not settled after all: a batch event of theirs names a ticket or chat that an event
        of one of their settled journeys names (it would extend, link to or move a survey of a
        settled thread). Such a customer's journeys leave batch_frozen and their events join
        the history. What stays in batch_frozen is what ``settled_journeys`` reports.

        One read of ``events`` serves both: it keeps, besides the events outside settled
        journeys, the settled events that share a ticket or chat id with some batch event (a
        handful), and the check looks only at those. The check used to read ``events`` on its
        own: where the touched customers' rows lie in most row groups, each read is one of the
        whole table (0.4-0.7 s each at 8.3M events, docs/performance.md, "One read of the
        touched customers' events"). Only a customer found by the check has the rest of its
        settled events read, by a second read.

        A settled customer has no landed event in batch_events (a customer with a replaced or
        replacing event has no settled journey: ``_freeze_settled_journeys``), so comparing with
        every batch event of the same customer is the check as stated."""
        con = self.con
        settled = _SETTLED_EVENT.format(links=self._touched_rows("journey_events", again=True))
        landed_events = self._landed_history()
        self._temp_from_query(
            "batch_history",
            f"""SELECT * FROM (SELECT {_HISTORY_COLUMNS}, epoch_us(occurred_at) AS at_us, {settled} AS _settled
                               {landed_events})
                WHERE NOT _settled OR ticket_id IN (SELECT ticket_id FROM batch_events)
                   OR chat_id IN (SELECT chat_id FROM batch_events)""")
        # (the settled rows kept are few: they share an id with some batch event, so the join's
        # OR is tried for few pairs)
        self._temp_from_query(
            "batch_unfrozen",
            """SELECT DISTINCT h.customer_id
               FROM (SELECT customer_id, ticket_id, chat_id FROM batch_history WHERE _settled) h
               JOIN batch_events b ON b.customer_id = h.customer_id AND (b.ticket_id = h.ticket_id OR b.chat_id = h.chat_id)""")
        if con.execute("SELECT count(*) FROM batch_unfrozen").fetchone()[0]:
            unfrozen = "customer_id IN (SELECT customer_id FROM batch_unfrozen)"
            con.execute(f"DELETE FROM batch_history WHERE _settled AND {unfrozen}")
            con.execute(f"INSERT INTO batch_history SELECT {_HISTORY_COLUMNS}, epoch_us(occurred_at), false "
                        f"{landed_events} AND {unfrozen} AND {settled}")
            con.execute(f"DELETE FROM batch_frozen WHERE {unfrozen}")
        con.execute("DELETE FROM batch_history WHERE _settled")
        self.settled_journeys = dict(con.execute(
            "SELECT customer_id, count(*) FROM batch_frozen GROUP BY customer_id").fetchall())

    def land(self, facts: BatchFacts, staged: StagedFiles, backlog_left: bool = False) -> LandedBatch:
        """One transaction: events (new and replacing), losing copies, dead letters, journeys of
        touched customers, offsets, the attempt's outcome and the batch row — committed only if
        every record the batch read is accounted for (``_check_accounting``).

        ``backlog_left``: more records wait behind this batch. The replica publish is then
        deferred unless the last one is ``REPLICA_DEFER_MAX_S`` old (``publish_pending``), and
        the log is checkpointed only once it reaches ``BACKLOG_CHECKPOINT_WAL_BYTES``."""
        from pipelines.storage.event_blocks import record_landing
        from transforms.batch_files import HANDOFF_SCHEMA, JOURNEY_METRICS_SCHEMA, JOURNEY_SCHEMA, LINK_SCHEMA

        land_started = datetime.now(timezone.utc)
        self._load_staged("staged_journeys", staged.journeys, JOURNEY_SCHEMA, facts.batch_id)
        self._load_staged("staged_links", staged.links, LINK_SCHEMA, facts.batch_id)
        self._load_staged("staged_jmetrics", staged.jmetrics, JOURNEY_METRICS_SCHEMA, facts.batch_id)
        self._load_staged("staged_handoffs", staged.handoffs, HANDOFF_SCHEMA, facts.batch_id)
        self._load_reads(facts.reads)
        con = self.con
        self.verify_file()
        self.fit_threads()
        con.execute("BEGIN TRANSACTION")
        try:
            self._check_lookup_holds(facts.batch_id)
            event_columns = f"""event_type, {_ts('at_us')}, occurred_at_text, customer_id, ticket_id, chat_id,
                survey_id, channel, handler_type, agent_id, team, status, author, outcome, csat, nps, payload,
                topic, "partition", "offset", {_ms_ts('kafka_ts_ms')}"""
            con.execute(
                f"INSERT INTO events SELECT event_id, {event_columns}, ?, now() FROM batch_events WHERE is_new",
                [facts.batch_id],
            )
            con.execute(f"INSERT INTO event_id_digests SELECT {_ID_DIGEST} FROM batch_events WHERE is_new")
            landed = int(con.execute("SELECT count(*) FROM batch_events WHERE is_new").fetchone()[0])
            # landed rows a batch copy replaces (batch_events' other rows: NOT is_new is replaces)
            replacing = int(con.execute("SELECT count(*) FROM batch_events WHERE NOT is_new").fetchone()[0])
            duplicates = self._land_losing_copies(facts.batch_id, replacing)
            assignments = ", ".join(
                f"{target} = {source}" for target, source in (
                    ("event_type", "b.event_type"), ("occurred_at", _ts("b.at_us")), ("occurred_at_text", "b.occurred_at_text"),
                    ("customer_id", "b.customer_id"), ("ticket_id", "b.ticket_id"), ("chat_id", "b.chat_id"),
                    ("survey_id", "b.survey_id"), ("channel", "b.channel"), ("handler_type", "b.handler_type"),
                    ("agent_id", "b.agent_id"), ("team", "b.team"), ("status", "b.status"), ("author", "b.author"),
                    ("outcome", "b.outcome"), ("csat", "b.csat"), ("nps", "b.nps"), ("payload", "b.payload"),
                    ("source_topic", "b.topic"), ("source_partition", 'b."partition"'), ("source_offset", 'b."offset"'),
                    ("kafka_timestamp", _ms_ts("b.kafka_ts_ms")), ("batch_id", "?"), ("landed_at", "now()"),
                )
            )
            con.execute(
                "INSERT INTO event_replacements SELECT event_id, old_hash, new_hash, old_customer, ? "
                "FROM batch_resolution WHERE replaces",
                [facts.batch_id],
            )
            if replacing:
                # the batch's copy beats the landed one: the row is replaced in place. Skipped when
                # nothing is replaced (the join would still read the whole events table); the rows
                # are found by their row ids (the event_id column of 8.3M events: 0.17 s)
                with self._filter_pushed_from_joins(replacing):
                    con.execute(
                        f"""UPDATE events SET {assignments} FROM batch_events b
                            WHERE events.event_id = b.event_id AND NOT b.is_new
                              AND events.rowid IN (SELECT landed_row FROM batch_resolution WHERE replaces)""",
                        [facts.batch_id],
                    )
            record_landing(con, int(self._events_at_lookup or 0), landed, ROW_BLOCK)  # (it held: _check_lookup_holds)
            con.execute(
                f"""INSERT INTO dead_letters SELECT topic, "partition", "offset", {_ms_ts('kafka_ts_ms')},
                    raw, reason, detail, ?, now() FROM staged_dead""",
                [facts.batch_id],
            )
            dead = int(con.execute("SELECT count(*) FROM staged_dead").fetchone()[0])
            touched = "SELECT customer_id FROM batch_customers"
            # the touched customers' rows of the journey tables, found once: each is used below
            # only before the first write to its table
            touched_rows = {table: self._touched_rows(table, again=True)
                            for table in ("journeys", "journey_events", "journey_metrics", "journey_handoffs")}
            revised = self._revision_reads(touched_rows, facts.batch_id)  # for journey_revisions
            con.execute(f"DELETE FROM journeys WHERE {touched_rows['journeys']} AND {_NOT_FROZEN}")
            con.execute(f"DELETE FROM journey_events WHERE {touched_rows['journey_events']} AND {_NOT_FROZEN}")
            con.execute(
                f"""INSERT INTO journeys SELECT journey_id, customer_id, status, {_ts('started_at_us')},
                    {_ts('resolved_at_us')}, {_ts('last_event_at_us')}, now(), time_to_resolution_s,
                    first_response_s, handoff_count, team_handoff_count, channel_hops, touchpoint_count,
                    contact_count, reopen_count, csat, nps, fcr, channels, agents, teams, threads,
                    event_count, ? FROM staged_journeys""",
                [facts.batch_id],
            )
            journeys = int(con.execute("SELECT count(*) FROM staged_journeys").fetchone()[0])
            con.execute("INSERT INTO journey_events SELECT event_id, journey_id, customer_id, ? FROM staged_links", [facts.batch_id])
            self._land_service_metrics(facts.batch_id, touched_rows, revised)
            self._check_accounting(facts, landed, duplicates, dead)
            self._advance_offsets(facts)
            self._settle_attempts(facts)
            customers = int(con.execute(f"SELECT count(*) FROM ({touched})").fetchone()[0])
            finished = datetime.now(timezone.utc)
            land_s = (finished - land_started).total_seconds()
            duration = (finished - facts.started_at).total_seconds()
            con.execute(
                f"""INSERT INTO pipeline_batches
                   SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,
                          -- the rows this batch inserted or replaced (its events, without
                          -- scanning the whole events table)
                          (SELECT min({_ts('at_us')}) FROM batch_events),
                          (SELECT max({_ts('at_us')}) FROM batch_events),
                          (SELECT min({_ms_ts('kafka_ts_ms')}) FROM batch_events),
                          (SELECT max({_ms_ts('kafka_ts_ms')}) FROM batch_events),
                          ?""",
                [
                    facts.batch_id, facts.started_at, finished, duration, facts.ingest_s, facts.assemble_s,
                    land_s, facts.consumed, landed, duplicates, dead, customers, journeys,
                    json.dumps(facts.ranges),
                ],
            )
            con.execute("COMMIT")
            self._events_at_lookup = None  # the next landing needs a look-up of its own
        except STORAGE_FAILURES as exc:
            _rollback_quietly(con)
            raise StoreError(f"landing batch {facts.batch_id} into {self.path} failed, nothing of it was kept "
                             f"(offsets unchanged): {str(exc).splitlines()[0]}") from exc
        except BaseException:
            _rollback_quietly(con)
            raise
        self.verify_file(facts.batch_id)  # deleted between the check above and the commit
        if self.replica is not None:
            self.replica.note_rewritten(facts.batch_id, self._previous_journey_batches(facts.batch_id))
        self._publish_due = True
        if not backlog_left or time.monotonic() - self._published_at >= REPLICA_DEFER_MAX_S:
            self.publish_pending()
        self.fit_threads()  # a checkpoint of a large log takes a second or more: on both cores if they are free
        self._checkpoint_if_due(backlog_left)
        return LandedBatch(
            batch_id=facts.batch_id,
            consumed=facts.consumed,
            landed=landed,
            duplicates=duplicates,
            dead_letters=dead,
            customers_touched=customers,
            journeys_written=journeys,
            duration_s=duration,
        )

    # ---------------------------------------------------------------- service metrics

    def memory_limit(self) -> str:
        """DuckDB's memory limit for this database, as DuckDB prints it (e.g. 488.2 MiB)."""
        return str(self.con.execute("SELECT current_setting('memory_limit')").fetchone()[0])

    def read_before_landing(self) -> None:
        """Reads, ahead of the landing, what its revisions compare against: the touched
        customers' journeys as landed (``revision_before``) and their links (``batch_links``).
        Call it after ``export_history`` (the settled journeys are decided by then); the landing
        of the same batch uses them instead of reading them itself. Nothing writes the journey
        tables in between (this process is their only writer, and the landing writes them only
        after these reads), so they hold what the landing would have read.

        The runner calls it on a thread of its own while the batch assembles in Beam, which
        does not use this connection, when the other core is free: on the growth benchmark's
        grown store these reads took 0.03-0.04 s of the landing (docs/performance.md, "The
        landing's first reads beside the assembly")."""
        touched_rows = {table: self._touched_rows(table, again=True) for table in ("journeys", "journey_metrics")}
        revised = self._snapshot_and_links(touched_rows)
        self._read_before = (int(self._batch_id), revised) if self._batch_id is not None else None

    def _revision_reads(self, touched_rows: dict[str, str], batch_id: int) -> int:
        """Inside the landing, before the journey tables are rewritten: the journeys the
        revisions compare against, read now unless ``read_before_landing`` read them for this
        batch. Returns how many."""
        read_before, self._read_before = self._read_before, None
        if read_before is not None and read_before[0] == batch_id:
            return read_before[1]
        return self._snapshot_and_links(touched_rows)

    def _snapshot_and_links(self, touched_rows: dict[str, str]) -> int:
        revised = self._snapshot_before(touched_rows)
        if revised:  # the revisions statement reads the links as landed: before they are rewritten
            self._read_links()
        return revised

    def _snapshot_before(self, touched_rows: dict[str, str]) -> int:
        """Copies the landed journeys (+ service metrics) the batch recomputes into the temp
        table ``revision_before``, before the landing rewrites them: the touched customers'
        rows (``touched_rows``, by table) outside settled journeys. Returns how many."""
        self._temp_from_query("revision_before", _SNAPSHOT.format(
            journeys=f"{touched_rows['journeys']} AND {_NOT_FROZEN}", metrics=touched_rows["journey_metrics"]))
        return int(self.con.execute("SELECT count(*) FROM revision_before").fetchone()[0])

    def _revision_columns(self) -> list["ValueColumn"]:
        """The columns a revision compares, read from the tables themselves (cached: the schema
        does not change while the store is open)."""
        from pipelines.storage.revision_sql import value_columns

        if self._compared_columns is None:
            self._compared_columns = value_columns(self.con)
        return self._compared_columns

    def _land_service_metrics(self, batch_id: int, touched_rows: dict[str, str], revised: int) -> None:
        """journey_metrics and journey_handoffs of the touched customers, and journey_revisions:
        how this batch changed their ``revised`` landed journeys (docs/metrics.md, "Revisions").
        Runs inside the landing transaction, after the new journeys and links are in."""
        from pipelines.storage.revision_sql import insert_revisions

        con = self.con
        con.execute(f"DELETE FROM journey_metrics WHERE {touched_rows['journey_metrics']} AND {_NOT_FROZEN}")
        con.execute(f"DELETE FROM journey_handoffs WHERE {touched_rows['journey_handoffs']} AND {_NOT_FROZEN}")
        con.execute(
            f"""INSERT INTO journey_metrics SELECT journey_id, customer_id, calendar,
                time_to_resolution_business_s, first_response_business_s, {_ts('first_resolved_at_us')},
                first_resolution_s, first_resolution_business_s, resolution_count, durably_resolved,
                {_ts('durable_check_at_us')}, repeat_contact_within_s, repeat_contact_thread,
                repeat_contact_channel, one_contact_resolution, started_with_bot, bot_only,
                first_bot_response_s, {_ts('bot_handoff_at_us')}, first_human_response_after_bot_s,
                bot_to_human_handoffs, human_to_bot_handoffs, bot_to_bot_handoffs, team_to_team_handoffs,
                agent_to_agent_handoffs, escalation_handoffs, post_reply_reassignments,
                distinct_human_agents, distinct_teams, agent_pingpong_immediate, agent_pingpong_returns,
                team_pingpong_immediate, team_pingpong_returns, ? FROM staged_jmetrics""",
            [batch_id],
        )
        con.execute(
            f"""INSERT INTO journey_handoffs SELECT journey_id, customer_id, seq, {_ts('at_us')}, event_id,
                thread, kind, from_agent, from_team, from_is_bot, to_agent, to_team, to_is_bot,
                team_changed, agent_changed, escalation, after_first_reply, ? FROM staged_handoffs""",
            [batch_id],
        )
        if not revised:
            return
        # The rows this batch wrote for the journeys landed before (a new journey is no revision),
        # found by batch id: DuckDB's min-max index on batch_id skips every older row group.
        self._temp_from_query("revision_after", _SNAPSHOT.format(**_AFTER), [batch_id, batch_id])
        con.execute(insert_revisions(self._revision_columns()), [batch_id])

    def _load_reads(self, reads: list[dict[str, Any]]) -> None:
        import pyarrow as pa

        self._temp_from_arrow("staged_reads", pa.Table.from_pylist(
            [{"topic": r["topic"], "partition": r["partition"], "start": r["start"], "stop": r["stop"],
              "records": r["records"]} for r in reads],
            schema=pa.schema([("topic", pa.string()), ("partition", pa.int32()), ("start", pa.int64()),
                              ("stop", pa.int64()), ("records", pa.int64())]),
        ))

    def _temp_from_query(self, name: str, query: str, params: Iterable[Any] = ()) -> None:
        """The temp table ``name`` (replaced if there) holding the rows of ``query``."""
        self.con.execute(f"DROP TABLE IF EXISTS {name}")
        self.con.execute(f"CREATE TEMP TABLE {name} AS {query}", list(params))

    def _temp_from_arrow(self, name: str, data: Any) -> None:
        self.con.register("cxj_arrow_input", data)
        try:
            self._temp_from_query(name, "SELECT * FROM cxj_arrow_input")
        finally:
            self.con.unregister("cxj_arrow_input")

    def _land_losing_copies(self, batch_id: int, replacing: int) -> int:
        """Records every copy that lost (within the batch, to a landed row, or a landed row that
        a batch copy replaced): a conflict if its content differs from the final winner's, a
        plain duplicate delivery if not. Returns how many copies lost: the batch's duplicates.
        ``replacing``: how many landed rows batch copies replace."""
        con = self.con
        # (a replaced landed row is read by its row id: joined on event_id, the payload of every
        # landed event was read, 0.55 s at 8.3M events)
        with self._filter_pushed_from_joins(replacing):
            self._temp_from_query(
                "batch_losers",
                f"""WITH winner AS (
                        SELECT s.event_id, CASE WHEN r.event_id IS NULL OR r.replaces THEN s.content_hash
                                                ELSE r.old_hash END AS winner_hash
                        FROM staged_events s LEFT JOIN batch_resolution r USING (event_id)
                    ), losers AS (
                        SELECT event_id, content_hash AS loser_hash, payload, topic, "partition", "offset",
                               {_ms_ts('kafka_ts_ms')} AS kafka_timestamp FROM staged_copies
                        UNION ALL
                        SELECT s.event_id, s.content_hash, s.payload, s.topic, s."partition", s."offset",
                               {_ms_ts('s.kafka_ts_ms')} FROM staged_events s
                        JOIN batch_resolution r USING (event_id) WHERE NOT r.replaces
                        UNION ALL
                        SELECT e.event_id, r.old_hash, e.payload::VARCHAR, e.source_topic, e.source_partition,
                               e.source_offset, e.kafka_timestamp
                        FROM (SELECT * FROM events
                              WHERE rowid IN (SELECT landed_row FROM batch_resolution WHERE replaces)) e
                        JOIN batch_resolution r USING (event_id) WHERE r.replaces
                    )
                    SELECT l.*, w.winner_hash FROM losers l JOIN winner w USING (event_id)"""
            )
        changed = "SELECT event_id, old_hash, new_hash FROM batch_resolution WHERE replaces AND old_hash <> new_hash"
        # earlier conflicts of a replaced event now lose to the new winner
        con.execute(f"UPDATE event_conflicts SET winner_hash = c.new_hash FROM ({changed}) c "
                    "WHERE event_conflicts.event_id = c.event_id")
        # plain duplicates of a replaced winner are conflicting copies now
        con.execute(
            f"""INSERT INTO event_conflicts
                SELECT d.event_id, c.new_hash, d.content_hash, e.payload::VARCHAR, d.topic, d."partition", d."offset",
                       d.kafka_timestamp, ?, now()
                FROM duplicate_deliveries d JOIN ({changed}) c USING (event_id) JOIN events e USING (event_id)""",
            [batch_id],
        )
        con.execute(f"DELETE FROM duplicate_deliveries WHERE event_id IN (SELECT event_id FROM ({changed}))")
        con.execute(
            """INSERT INTO event_conflicts SELECT event_id, winner_hash, loser_hash, payload, topic, "partition",
                   "offset", kafka_timestamp, ?, now() FROM batch_losers WHERE loser_hash <> winner_hash""",
            [batch_id],
        )
        con.execute(
            """INSERT INTO duplicate_deliveries SELECT event_id, loser_hash, topic, "partition", "offset",
                   kafka_timestamp, ? FROM batch_losers WHERE loser_hash = winner_hash""",
            [batch_id],
        )
        return int(con.execute("SELECT count(*) FROM batch_losers").fetchone()[0])

    def _check_accounting(self, facts: BatchFacts, landed: int, duplicates: int, dead: int) -> None:
        """Inside the landing transaction: every record read is in exactly one staged output,
        per range as the read manifests say, and consumed = landed + duplicates + dead letters;
        every event of a touched customer that belongs to a thread has its journey."""
        con = self.con
        staged = """SELECT topic, "partition", "offset" FROM staged_events
                    UNION ALL SELECT topic, "partition", "offset" FROM staged_copies
                    UNION ALL SELECT topic, "partition", "offset" FROM staged_dead"""
        short = con.execute(
            f"""SELECT r.topic, r."partition", r.start, r.stop, r.records, count(s."offset"), count(DISTINCT s."offset")
                FROM staged_reads r LEFT JOIN ({staged}) s
                  ON s.topic = r.topic AND s."partition" = r."partition" AND s."offset" >= r.start AND s."offset" < r.stop
                GROUP BY ALL HAVING count(s."offset") <> r.records OR count(DISTINCT s."offset") <> r.records
                ORDER BY ALL LIMIT 1"""
        ).fetchone()
        if short is not None:
            topic, partition, start, stop, records, rows, distinct = short
            raise BatchNotAccounted(
                f"batch {facts.batch_id}: {topic}[{partition}] offsets {start}..{stop - 1}: the read stage read "
                f"{records} records but the staged output holds {rows} ({distinct} distinct); staged files are missing or short"
            )
        stray = con.execute(
            f"""SELECT count(*) FROM ({staged}) s ANTI JOIN staged_reads r
                ON s.topic = r.topic AND s."partition" = r."partition" AND s."offset" >= r.start AND s."offset" < r.stop"""
        ).fetchone()[0]
        if stray:
            raise BatchNotAccounted(f"batch {facts.batch_id}: {stray} staged rows lie outside the ranges the read stage covered")
        if facts.consumed != landed + duplicates + dead:
            raise BatchNotAccounted(
                f"batch {facts.batch_id}: consumed {facts.consumed} but accounted for {landed + duplicates + dead} "
                f"({landed} landed + {duplicates} duplicates + {dead} dead letters)"
            )
        unlinked = con.execute(
            f"""SELECT count(*) FROM (SELECT event_id FROM ({self._touched_events()}) WHERE NOT starts_with(event_type, 'survey.')) e
               ANTI JOIN staged_links l USING (event_id)"""
        ).fetchone()[0]
        orphans = con.execute(
            "SELECT count(*) FROM staged_links l ANTI JOIN staged_journeys j USING (journey_id)"
        ).fetchone()[0]
        if unlinked or orphans:
            raise BatchNotAccounted(
                f"batch {facts.batch_id}: staged journeys are missing or short ({unlinked} events without a journey, "
                f"{orphans} links to missing journeys)"
            )

    def _touched_events(self) -> str:
        """A query of (event_id, event_type) of every event of the touched customers whose journey
        the batch recomputes, once the batch's events are inserted: their landed events the batch
        left as they were, outside settled journeys (batch_history, read once by export_history)
        and the batch's own (batch_events, new or replacing a landed row; none of them belongs to
        a settled journey, since a customer with a replaced event has none). No other row of
        events changes customer or is added in a landing, so this is what a read of events by
        the touched customers finds, less the settled journeys' events (whose links stay as
        landed), without that second read (0.12 s of a 5,000-event batch on a store of 8M
        events). A landing with touched customers but no export_history (a caller that skipped
        it, so nothing is settled) reads events itself."""
        if self._history_read:
            return "SELECT event_id, event_type FROM batch_history UNION ALL SELECT event_id, event_type FROM batch_events"
        return f"SELECT event_id, event_type FROM events WHERE {self._touched_rows('events', again=True)}"

    # ---------------------------------------------------------------- attempts (poison isolation)

    def begin_attempt(self, ranges: list[dict[str, Any]]) -> int:
        """Records an attempt before its stages run (committed at once): if the process dies
        on the batch, the next start finds the attempt without an outcome."""
        attempt_id = int(self.con.execute("SELECT coalesce(max(attempt_id), 0) + 1 FROM batch_attempts").fetchone()[0])
        records = sum(int(r["to"]) - int(r["from"]) for r in ranges)
        self.con.execute(
            "INSERT INTO batch_attempts VALUES (?, now(), ?, ?, NULL, NULL, NULL, false)",
            [attempt_id, json.dumps(ranges), records],
        )
        return attempt_id

    def finish_attempt(self, attempt_id: int, outcome: str, error: str = "") -> None:
        self.con.execute(
            "UPDATE batch_attempts SET outcome = ?, error = ?, finished_at = now() WHERE attempt_id = ?",
            [outcome, error[:1000] or None, attempt_id],
        )

    def settle_dead_attempts(self) -> list[tuple[int, str]]:
        """Attempts left without an outcome: the process died on them. A second death in a row
        on the same ranges counts against the batch (``died_again``), a first one does not (a
        kill or a power cut is not the batch's fault). Returns (attempt_id, outcome) settled."""
        settled = []
        open_attempts = self.con.execute(
            "SELECT attempt_id, ranges::VARCHAR FROM batch_attempts WHERE outcome IS NULL ORDER BY attempt_id"
        ).fetchall()
        for attempt_id, ranges in open_attempts:
            before = self.con.execute(
                "SELECT outcome, ranges::VARCHAR FROM batch_attempts WHERE attempt_id < ? ORDER BY attempt_id DESC LIMIT 1",
                [attempt_id],
            ).fetchone()
            again = before is not None and before[0] in ("died", "died_again") and json.loads(before[1]) == json.loads(ranges)
            outcome = "died_again" if again else "died"
            self.finish_attempt(attempt_id, outcome, "the process died while this attempt ran")
            settled.append((attempt_id, outcome))
        return settled

    def open_suspect(self, starts: dict[tuple[str, int], int]) -> Optional[Suspect]:
        """The newest failed attempt (a stage failure, two deaths in a row, or the very last
        attempt if the process died on it) with offsets still to land from ``starts``."""
        last = self.con.execute("SELECT max(attempt_id) FROM batch_attempts").fetchone()[0]
        rows = self.con.execute(
            """SELECT attempt_id, ranges::VARCHAR, records, outcome, coalesce(error, '') FROM batch_attempts
               WHERE NOT resolved AND (outcome IN ('failed', 'died_again') OR (outcome = 'died' AND attempt_id = ?))
               ORDER BY attempt_id DESC""",
            [last],
        ).fetchall()
        for attempt_id, ranges, records, outcome, error in rows:
            remaining = []
            for r in json.loads(ranges):
                key = (r["topic"], int(r["partition"]))
                at = starts.get(key)
                if at is not None and int(r["from"]) <= at < int(r["to"]):
                    remaining.append((key[0], key[1], at, int(r["to"])))
            if remaining:
                return Suspect(int(attempt_id), int(records), outcome, error, sorted(remaining))
        return None

    def _settle_attempts(self, facts: BatchFacts) -> None:
        """In the landing transaction: the attempt landed; failures whose offsets have all
        landed now are resolved."""
        if facts.attempt_id is not None:
            self.finish_attempt(facts.attempt_id, "landed")
        landed = self.landed_offsets()
        for attempt_id, ranges in self.con.execute(
            "SELECT attempt_id, ranges::VARCHAR FROM batch_attempts WHERE NOT resolved AND outcome IN ('failed', 'died', 'died_again')"
        ).fetchall():
            if all(landed.get((r["topic"], int(r["partition"])), 0) >= int(r["to"]) for r in json.loads(ranges)):
                self.con.execute("UPDATE batch_attempts SET resolved = true WHERE attempt_id = ?", [attempt_id])

    def rewind_offsets(self, offsets: dict[tuple[str, int], int]) -> None:
        """Moves stored offsets back (never forward): re-reading is safe, skipping is not."""
        self.con.execute("BEGIN TRANSACTION")
        try:
            for (topic, partition), offset in offsets.items():
                self.con.execute(
                    'UPDATE pipeline_offsets SET next_offset = ?, updated_at = now() '
                    'WHERE topic = ? AND "partition" = ? AND next_offset > ?',
                    [offset, topic, partition, offset],
                )
            self.con.execute("COMMIT")
        except BaseException:
            _rollback_quietly(self.con)
            raise

    def record_source_changes(self, changes: list[SourceChange], batch_id: int) -> None:
        """One transaction: the new resume offsets (rewound, past deleted records, or dropped
        for a removed partition), their fingerprints cleared, and a source_resets row each."""
        self.con.execute("BEGIN TRANSACTION")
        try:
            for c in changes:
                where = 'WHERE topic = ? AND "partition" = ?'
                self.con.execute(f"DELETE FROM source_fingerprints {where}", [c.topic, c.partition])
                if c.kind == PARTITION_REMOVED or c.to_offset is None:
                    self.con.execute(f"DELETE FROM pipeline_offsets {where}", [c.topic, c.partition])
                else:
                    self.con.execute(f"UPDATE pipeline_offsets SET next_offset = ?, updated_at = now() {where}",
                                     [c.to_offset, c.topic, c.partition])
                self.con.execute(
                    "INSERT INTO source_resets VALUES (?, ?, ?, ?, ?, ?, ?, now(), ?)",
                    [c.topic, c.partition, c.kind, c.from_offset, c.to_offset, c.records, c.detail, batch_id],
                )
            self.con.execute("COMMIT")
        except duckdb.Error as exc:
            _rollback_quietly(self.con)
            raise StoreError(f"recording a change of the broker's log in {self.path} failed (offsets unchanged): "
                             f"{str(exc).splitlines()[0]}") from exc
        except BaseException:
            _rollback_quietly(self.con)
            raise

    def _advance_offsets(self, facts: BatchFacts) -> None:
        """Inside the landing transaction: next offsets and the fingerprint of each range's last record."""
        for r in facts.ranges:
            key = [r["topic"], r["partition"]]
            self.con.execute('DELETE FROM pipeline_offsets WHERE topic = ? AND "partition" = ?', key)
            self.con.execute(
                "INSERT INTO pipeline_offsets VALUES (?, ?, ?, ?, now())",
                [r["topic"], r["partition"], r["to"], facts.batch_id],
            )
            self.con.execute('DELETE FROM source_fingerprints WHERE topic = ? AND "partition" = ?', key)
            fp = self.pending_fingerprints.get((r["topic"], r["partition"], r["to"]))
            if fp is not None:  # none: the range's last offset held no record (a transaction marker)
                self.con.execute(
                    "INSERT INTO source_fingerprints VALUES (?, ?, ?, ?, ?, ?, now())",
                    [*key, fp.offset, fp.timestamp_ms, fp.digest, facts.batch_id],
                )
