"""A lake that many writers and many readers share: DuckLake with a PostgreSQL catalog.

Each writer process keeps its own DuckDB file (``--db``) as its working store: results and
Kafka offsets still land there in one transaction per batch, crash-safe exactly as with one
writer. After every landed batch the writer *publishes* it to the shared lake, like the local
replica (replica.py), with three differences:

* every lake table has a ``writer_id`` column, and a writer only ever deletes or replaces its
  own rows. A publish appends the batches after the writer's last published one (the largest
  ``batch_id`` of its rows in ``pipeline_batches``, read inside the publishing transaction), so
  a retried or repeated publish never doubles anything, and a writer killed between landing
  and publishing catches up when it starts again;
* several writers commit at once. DuckLake's transactions are optimistic: a commit that
  conflicts with one that committed meanwhile fails, is rolled back and is retried from the
  start (re-reading what is published), with a jittered back-off (``_retrying``);
* a customer's journeys are only right when ONE writer sees all of the customer's events. The
  writers split the work by Kafka partition (``cxj run --partitions``), which keeps a customer
  with one writer as long as producers key every topic by customer_id with equal partition
  counts. After each commit the writer looks for customers (and event ids) another writer has
  landed too and records them in ``lake_conflicts`` with an ERROR line; `cxj status` turns
  them into a WARN. Nothing is merged silently.

Readers attach the same catalog read-only (reader.py) and see whole publishes only: DuckLake
snapshots are PostgreSQL transactions, so no multi-threaded-scan or WAL workaround is needed.
docs/storage.md "Shared lake" has the layout other writers (the streaming job) must follow.
"""
from __future__ import annotations

import logging
import os
import random
import socket
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

import duckdb

from pipelines.storage.lake_target import LakeTarget
from pipelines.storage.quoting import ident, sql_literal
from pipelines.storage.replica import (
    APPENDED,
    LAKE_ALIAS,
    META_TABLE,
    REPLACED,
    STATE_TABLE,
    TABLES,
    PublishResult,
    Replica,
    ReplicaError,
    _rollback,
    load_extensions,
    read_summary,
    summary_differences,
)

log = logging.getLogger("cxj.lake")

WRITER_COLUMN = "writer_id"
CONFLICTS_TABLE = "lake_conflicts"
WRITER_TABLE = "lake_writer"  # in the writer's own DuckDB file: the id it publishes as
CONFLICT_RETRY_S = float(os.environ.get("CXJ_LAKE_RETRY_S", "120") or 120)

# What readers query to see how current the shared lake is: one row per writer.
SHARED_STATE_VIEW = f"""
CREATE OR REPLACE VIEW {STATE_TABLE} AS
SELECT m.{WRITER_COLUMN},
       coalesce(b.batch_id, 0) AS published_batch_id,  -- the writer's last published batch (its own numbering)
       b.started_at AS published_batch_started_at,
       b.finished_at AS published_batch_finished_at,
       m.rebuilt_at,                                   -- when the writer last re-published all its rows
       m.fingerprint,
       m.views_fingerprint
FROM {META_TABLE} m
LEFT JOIN (SELECT {WRITER_COLUMN}, max(batch_id) AS batch_id, max_by(started_at, batch_id) AS started_at,
                  max_by(finished_at, batch_id) AS finished_at
           FROM pipeline_batches GROUP BY {WRITER_COLUMN}) b USING ({WRITER_COLUMN})
"""

# Columns a later version added to a lake table: (table, column) -> (type, how to fill them for
# every writer's rows already there). A lake created before gains them from the first writer of
# the new version.
ADDED_COLUMNS: dict[tuple[str, str], tuple[str, str]] = {
    # a link was last written with its journey (store.py, Store._stamp_journey_events)
    ("journey_events", "batch_id"): ("BIGINT",
        f"UPDATE {LAKE_ALIAS}.journey_events SET batch_id = j.batch_id FROM {LAKE_ALIAS}.journeys j "
        f"WHERE j.journey_id = journey_events.journey_id AND j.{WRITER_COLUMN} = journey_events.{WRITER_COLUMN}"),
}

T = TypeVar("T")


def is_conflict(exc: BaseException) -> bool:
    """A DuckLake commit that lost against a concurrent one (retry), not a real failure."""
    text = str(exc).lower()
    return isinstance(exc, duckdb.TransactionException) or "conflict" in text or "failed to commit ducklake" in text


def _lost_creation_race(exc: BaseException) -> bool:
    """Two writers creating a new lake at once: the loser's CREATE TABLEs of the catalog fail in
    PostgreSQL (one transaction, nothing kept); its next ATTACH finds the winner's catalog."""
    text = str(exc).lower()
    return "failed to initialize ducklake" in text and ("duplicate key" in text or "already exists" in text)


def writer_identity(con: duckdb.DuckDBPyConnection, source: str, wanted: Optional[str]) -> str:
    """The id this database publishes as: chosen once and kept in the database itself.

    Kept with the data it names, so a restart (or a copy of the file moved elsewhere) publishes
    under the same id and can never publish the same batches twice under two ids. Asking for
    another id than the one the database has is refused.
    """
    con.execute(f"CREATE TABLE IF NOT EXISTS {source}.{WRITER_TABLE} ({WRITER_COLUMN} VARCHAR NOT NULL, created_at TIMESTAMPTZ NOT NULL)")
    row = con.execute(f"SELECT {WRITER_COLUMN} FROM {source}.{WRITER_TABLE} LIMIT 1").fetchone()
    if row is not None:
        if wanted and wanted != row[0]:
            raise ReplicaError(f"this database publishes to the lake as writer {row[0]!r}; publishing it as {wanted!r} "
                               "would show its batches twice (drop --writer-id, or use a new --db)")
        return str(row[0])
    chosen = wanted or f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
    con.execute(f"INSERT INTO {source}.{WRITER_TABLE} VALUES (?, now())", [chosen])
    return chosen


class SharedLake(Replica):
    """Publishes one writer's landed batches to a shared DuckLake (PostgreSQL catalog)."""

    state_view = SHARED_STATE_VIEW

    def __init__(self, con: duckdb.DuckDBPyConnection, db: Path | str, target: LakeTarget,
                 writer_id: Optional[str] = None) -> None:
        self.target = target
        self.wanted_writer = writer_id
        self.writer_id = ""
        self.conflicts_retried = 0  # commits retried after losing to another writer (for tests and logs)
        self.shared_conflicts = 0  # customers/events found landed by another writer too
        super().__init__(con, db)

    # ------------------------------------------------------------------ setup

    def _open(self) -> None:
        self.writer_id = writer_identity(self.con, self.source, self.wanted_writer)
        self._mine = f"{WRITER_COLUMN} = {sql_literal(self.writer_id)}"
        if self.target.data_path:
            Path(self.target.data_path).mkdir(parents=True, exist_ok=True)
        options = ["DATA_INLINING_ROW_LIMIT 0"]
        if self.target.data_path:
            options.insert(0, f"DATA_PATH {sql_literal(self.target.data_path)}")
        try:
            load_extensions(self.con, postgres=True)
            options_sql = ", ".join(options)
            self._retrying("attach", lambda: self.con.execute(
                f"ATTACH {sql_literal(self.target.attach_target)} AS {ident(LAKE_ALIAS)} ({options_sql})"),
                also=_lost_creation_race)
        except (duckdb.Error, ReplicaError) as exc:
            self.close()
            raise ReplicaError(f"cannot attach {self.target.describe()}: {str(exc).splitlines()[0]}") from None
        recorded = self.lake_data_path()
        if self.target.data_path and recorded and recorded.rstrip("/") != self.target.data_path.rstrip("/"):
            self.close()
            raise ReplicaError(f"the shared lake keeps its files in {recorded}, not in --lake-data {self.target.data_path}: "
                               "every writer and reader must use the lake's one data folder")
        self._retrying("create tables", self._ensure_tables)
        log.info("publishing to %s as writer %r", self.target.describe(), self.writer_id)

    def lake_data_path(self) -> Optional[str]:
        row = self.con.execute(
            f"SELECT value FROM ducklake_options({sql_literal(LAKE_ALIAS)}) WHERE option_name = 'data_path'").fetchone()
        return str(row[0]) if row and row[0] else None

    def _start_keepalive(self) -> None:  # a PostgreSQL catalog needs no SQLite keep-alive
        self._keepalive = None

    def _recreate_if_deleted(self) -> None:  # nothing on the local disk to delete
        return

    def _columns(self, database: str, table: str) -> list[tuple[str, str]]:
        return [(r[0], r[1]) for r in self.con.execute(f"DESCRIBE {database}.{table}").fetchall()]

    def _ensure_tables(self) -> None:
        """Creates the lake's tables when missing; refuses a lake whose columns differ from ours
        (all writers of a lake run the same table version: rows of the others cannot be rebuilt)."""
        con = self.con
        con.execute("BEGIN TRANSACTION")
        try:
            existing = {r[0] for r in con.execute(
                f"SELECT table_name FROM information_schema.tables WHERE table_catalog = {sql_literal(LAKE_ALIAS)}").fetchall()}
            for table in TABLES:
                if table not in existing:
                    con.execute(f"CREATE TABLE {LAKE_ALIAS}.{table} AS SELECT *, CAST(NULL AS VARCHAR) AS {WRITER_COLUMN} "
                                f"FROM {self.source}.{table} LIMIT 0")
            if META_TABLE not in existing:
                con.execute(f"CREATE TABLE {LAKE_ALIAS}.{META_TABLE} ({WRITER_COLUMN} VARCHAR, fingerprint VARCHAR, "
                            "views_fingerprint VARCHAR, rebuilt_at TIMESTAMPTZ)")
            if CONFLICTS_TABLE not in existing:
                con.execute(f"CREATE TABLE {LAKE_ALIAS}.{CONFLICTS_TABLE} (kind VARCHAR, key VARCHAR, {WRITER_COLUMN} VARCHAR, "
                            "other_writer_id VARCHAR, batch_id BIGINT, detected_at TIMESTAMPTZ)")
            self._add_new_columns(existing)
            con.execute("COMMIT")
        except BaseException:
            _rollback(con)
            raise
        for table in TABLES:
            # by name: a column added to an older lake comes after writer_id, and every write
            # to the lake goes BY NAME
            ours = dict(self._columns(self.source, table) + [(WRITER_COLUMN, "VARCHAR")])
            theirs = dict(self._columns(LAKE_ALIAS, table))
            if ours != theirs:
                raise ReplicaError(f"the shared lake's table {table} has other columns than this writer's "
                                   "(writers of one lake must run the same version)")

    def _add_new_columns(self, existing: set[str]) -> None:
        """Inside _ensure_tables' transaction: adds to an older lake's tables the columns of
        ADDED_COLUMNS it lacks, filled for every writer's rows. A writer of the older version is
        refused when it next starts (docs/storage.md, "Shared lake", rule 5)."""
        for (table, column), (kind, fill) in ADDED_COLUMNS.items():
            if table not in existing or column in dict(self._columns(LAKE_ALIAS, table)):
                continue
            log.warning("shared lake: adding %s.%s (%s) to a lake an earlier version created, filled for every writer's rows",
                        table, column, kind)
            self.con.execute(f"ALTER TABLE {LAKE_ALIAS}.{table} ADD COLUMN {ident(column)} {kind}")
            self.con.execute(fill)

    # ------------------------------------------------------------------ retries

    def _retrying(self, what: str, attempt: Callable[[], T],
                  also: Callable[[BaseException], bool] = lambda exc: False) -> T:
        """Runs ``attempt`` (one whole transaction) again while it loses commit conflicts
        (or fails in a way ``also`` says is worth another try)."""
        deadline = time.monotonic() + CONFLICT_RETRY_S
        tries = 0
        while True:
            try:
                return attempt()
            except duckdb.Error as exc:
                if not (is_conflict(exc) or also(exc)) or time.monotonic() >= deadline:
                    raise
                tries += 1
                self.conflicts_retried += 1
                log.debug("shared lake: %s lost a commit conflict (try %d), retrying: %s", what, tries, str(exc).splitlines()[0])
                time.sleep(min(2.0, 0.05 * 2 ** min(tries, 6)) * random.uniform(0.5, 1.5))

    # ------------------------------------------------------------------ state

    def _state(self) -> Optional[tuple[int, Optional[datetime], str, str]]:
        row = self.con.execute(
            f"SELECT fingerprint, views_fingerprint FROM {LAKE_ALIAS}.{META_TABLE} WHERE {self._mine}").fetchone()
        if row is None:
            return None
        batch = self.con.execute(
            f"SELECT coalesce(max(batch_id), 0), max_by(started_at, batch_id) FROM {LAKE_ALIAS}.pipeline_batches WHERE {self._mine}"
        ).fetchone()
        return int(batch[0]), batch[1], str(row[0]), str(row[1])

    def _views_current(self) -> bool:
        found = self.con.execute(
            f"SELECT count(*) FROM duckdb_views() WHERE database_name = {sql_literal(LAKE_ALIAS)} "
            f"AND view_name = {sql_literal(STATE_TABLE)}").fetchone()[0]
        if not found:
            return False
        row = self.con.execute(f"SELECT views_fingerprint FROM {LAKE_ALIAS}.{META_TABLE} WHERE {self._mine}").fetchone()
        return row is not None and row[0] == self._views_fingerprint()

    # ------------------------------------------------------------------ publishing

    def catch_up(self) -> Optional[PublishResult]:
        state = self._state()
        reason = self._needs_rebuild(state)
        if reason is not None:
            return self._rebuild(reason)
        if not self._views_current():
            self._retrying("replace views", self._replace_views)
        return self.publish()

    def _replace_views(self) -> None:
        """CREATE OR REPLACE of every view, and this writer's views fingerprint, in one transaction
        (views are the lake's, not a writer's: never dropped here, other writers read them)."""
        con = self.con
        con.execute("BEGIN TRANSACTION")
        try:
            self._create_views()
            con.execute(f"UPDATE {LAKE_ALIAS}.{META_TABLE} SET views_fingerprint = {sql_literal(self._views_fingerprint())} "
                        f"WHERE {self._mine}")
            con.execute("COMMIT")
        except BaseException:
            _rollback(con)
            raise

    def publish(self) -> Optional[PublishResult]:
        result = self._retrying("publish", self._publish_once)
        if result is not None:
            self._retrying("record conflicts", lambda: self._record_conflicts(result.first_batch, result.last_batch))
        return result

    def _touched(self, window: str) -> str:
        return (f"SELECT customer_id FROM {self.source}.events WHERE {window} "
                f"UNION SELECT customer_id FROM {self.source}.journeys WHERE {window} "
                f"UNION SELECT old_customer_id FROM {self.source}.event_replacements WHERE {window}")

    def _publish_once(self) -> Optional[PublishResult]:
        """One transaction: this writer's batches after its last published one (see the module doc)."""
        started = time.perf_counter()
        con = self.con
        last = self._last_landed()
        mine, writer = self._mine, sql_literal(self.writer_id)
        con.execute("BEGIN TRANSACTION")
        try:
            published = int(con.execute(
                f"SELECT coalesce(max(batch_id), 0) FROM {LAKE_ALIAS}.pipeline_batches WHERE {mine}").fetchone()[0])
            if last <= published:
                con.execute("ROLLBACK")
                return None
            window = f"batch_id > {published} AND batch_id <= {last}"
            touched = self._touched(window)
            customers = int(con.execute(f"SELECT count(*) FROM ({touched})").fetchone()[0])
            replaced = f"SELECT event_id FROM {self.source}.event_replacements WHERE {window}"
            if con.execute(f"SELECT count(*) FROM ({replaced})").fetchone()[0]:
                con.execute(f"DELETE FROM {LAKE_ALIAS}.events WHERE {mine} AND event_id IN ({replaced})")
            for table in APPENDED:
                con.execute(f"INSERT INTO {LAKE_ALIAS}.{table} BY NAME "
                            f"SELECT *, {writer} AS {WRITER_COLUMN} FROM {self.source}.{table} WHERE {window}")
            for table in REPLACED:
                con.execute(f"DELETE FROM {LAKE_ALIAS}.{table} WHERE {mine}")
                con.execute(f"INSERT INTO {LAKE_ALIAS}.{table} BY NAME SELECT *, {writer} AS {WRITER_COLUMN} FROM {self.source}.{table}")
            # only the journeys the batches rewrote or removed, of this writer (replica.changed_journeys)
            # (this writer's old rows of those journeys carry the batch ids its store noted, as in
            # the local replica: Replica.note_rewritten)
            self._publish_journeys(window, mine=mine, writer_column=f"{writer} AS {WRITER_COLUMN}",
                                   previous_batches=self._previous_batches(published, last))
            con.execute("COMMIT")
        except BaseException:
            _rollback(con)
            raise
        return self._done(published + 1, last, customers, started, rebuilt=False)

    def _rebuild(self, reason: str) -> PublishResult:
        """Replaces all of THIS writer's rows with its database's, in one transaction."""
        log.info("shared lake: publishing all of writer %r's rows (%s)", self.writer_id, reason)
        return self._retrying("re-publish", self._rebuild_once)

    def _rebuild_once(self) -> PublishResult:
        started = time.perf_counter()
        con = self.con
        last = self._last_landed()
        mine, writer = self._mine, sql_literal(self.writer_id)
        con.execute("BEGIN TRANSACTION")
        try:
            for table in TABLES:
                con.execute(f"DELETE FROM {LAKE_ALIAS}.{table} WHERE {mine}")
                con.execute(f"INSERT INTO {LAKE_ALIAS}.{table} BY NAME SELECT *, {writer} AS {WRITER_COLUMN} FROM {self.source}.{table}")
            con.execute(f"DELETE FROM {LAKE_ALIAS}.{META_TABLE} WHERE {mine}")
            con.execute(f"INSERT INTO {LAKE_ALIAS}.{META_TABLE} VALUES ({writer}, {sql_literal(self._fingerprint())}, "
                        f"{sql_literal(self._views_fingerprint())}, now())")
            self._create_views()
            customers = int(con.execute(f"SELECT count(DISTINCT customer_id) FROM {self.source}.journeys").fetchone()[0])
            con.execute("COMMIT")
        except BaseException:
            _rollback(con)
            raise
        result = self._done(1 if last else 0, last, customers, started, rebuilt=True)
        if last:
            self._retrying("record conflicts", lambda: self._record_conflicts(1, last))
        return result

    def _record_conflicts(self, first: int, last: int) -> int:
        """Customers and event ids of batches first..last that another writer landed too.

        Run after the publish committed, on the newest snapshot: of two writers that publish
        the same new customer at the same moment, the one that commits second sees the first.
        Recorded once per (kind, key, writer pair); returns how many were new.
        """
        con = self.con
        window = f"batch_id >= {int(first)} AND batch_id <= {int(last)}"
        mine = self._mine
        found = f"""
            SELECT DISTINCT 'customer' AS kind, l.customer_id AS key, l.{WRITER_COLUMN} AS other
            FROM {LAKE_ALIAS}.events l
            WHERE NOT l.{mine} AND l.customer_id IN (SELECT customer_id FROM {self.source}.events WHERE {window})
            UNION
            SELECT DISTINCT 'event_id', l.event_id, l.{WRITER_COLUMN}
            FROM {LAKE_ALIAS}.events l
            WHERE NOT l.{mine} AND l.event_id IN (SELECT event_id FROM {self.source}.events WHERE {window})"""
        con.execute("BEGIN TRANSACTION")
        try:
            rows = con.execute(f"""
                SELECT f.kind, f.key, f.other FROM ({found}) f
                WHERE NOT EXISTS (SELECT 1 FROM {LAKE_ALIAS}.{CONFLICTS_TABLE} c
                                  WHERE c.kind = f.kind AND c.key = f.key AND c.{WRITER_COLUMN} = {sql_literal(self.writer_id)}
                                    AND c.other_writer_id = f.other)
                ORDER BY 1, 2, 3""").fetchall()
            if not rows:
                con.execute("ROLLBACK")
                return 0
            con.executemany(
                f"INSERT INTO {LAKE_ALIAS}.{CONFLICTS_TABLE} VALUES (?, ?, ?, ?, ?, now())",
                [[kind, key, self.writer_id, other, int(last)] for kind, key, other in rows])
            con.execute("COMMIT")
        except BaseException:
            _rollback(con)
            raise
        self.shared_conflicts += len(rows)
        customers = [r for r in rows if r[0] == "customer"]
        others = sorted({r[2] for r in rows})
        log.error(
            "shared lake: %d customers and %d event ids of writer %r were also landed by writer(s) %s (e.g. %s %s): "
            "their journeys are split between writers and wrong; give each partition one writer and key every topic "
            "by customer_id (listed in %s; docs/storage.md)",
            len(customers), len(rows) - len(customers), self.writer_id, ", ".join(map(repr, others)),
            rows[0][0], rows[0][1], CONFLICTS_TABLE)
        return len(rows)

    def verify(self) -> Optional[PublishResult]:
        """Compares this writer's rows in the lake with its database; re-publishes them when they differ."""
        con = self.con

        def lake_summary() -> dict[str, int]:
            con.execute("BEGIN TRANSACTION")  # one snapshot for all the counts
            try:
                return read_summary(con, f"{LAKE_ALIAS}.", where=self._mine)
            finally:
                _rollback(con)

        database = read_summary(con, f"{self.source}.")
        differences = summary_differences(lake_summary(), database)
        if not differences:
            return None
        log.warning("shared lake: writer %r's rows disagree with its database (%s): re-publishing them",
                    self.writer_id, "; ".join(differences))
        result = self._rebuild("they disagreed with the database")
        differences = summary_differences(lake_summary(), database)
        if differences:
            raise ReplicaError(f"writer {self.writer_id!r}'s rows still disagree after re-publishing: {'; '.join(differences)}")
        return result

    def _expire(self) -> int:
        """Snapshot expiry on PostgreSQL: ``older_than`` compares real timestamps there."""
        from pipelines.storage.replica import DEFAULT_RETENTION_S, retention_seconds

        lake = sql_literal(LAKE_ALIAS)
        try:
            retention_s = retention_seconds()
        except ValueError:
            retention_s = DEFAULT_RETENTION_S
        con = self._maintenance_con()
        try:
            expired = con.execute(
                f"CALL ducklake_expire_snapshots({lake}, older_than => now() - to_microseconds(?))",
                [int(retention_s * 1_000_000)]).fetchall()
            con.execute(f"CALL ducklake_cleanup_old_files({lake}, older_than => now() - to_microseconds(?))",
                        [int(retention_s * 1_000_000)]).fetchall()
            # files of publishes that died before their commit (a killed writer): referenced by no
            # snapshot; a day old at least, so no writer's running transaction can still want them
            con.execute(f"CALL ducklake_delete_orphaned_files({lake}, older_than => now() - INTERVAL 1 DAY)").fetchall()
            return len(expired)
        except duckdb.Error as exc:  # maintenance must never stop the pipeline (another writer may hold it)
            log.warning("shared lake snapshot expiry failed: %s", str(exc).splitlines()[0])
            return 0


def conflicts_summary(con: Any) -> Optional[tuple[int, int, list[str]]]:
    """(customers, event ids, writers involved) recorded in a shared lake's lake_conflicts; None
    when the connection reads no shared lake."""
    try:
        rows = con.execute(
            f"SELECT kind, count(DISTINCT key), list(DISTINCT {WRITER_COLUMN}) || list(DISTINCT other_writer_id) "
            f"FROM {CONFLICTS_TABLE} GROUP BY kind").fetchall()
    except duckdb.Error:
        return None
    customers = next((int(r[1]) for r in rows if r[0] == "customer"), 0)
    events = next((int(r[1]) for r in rows if r[0] == "event_id"), 0)
    writers = sorted({w for r in rows for w in r[2] if w})
    return customers, events, writers
