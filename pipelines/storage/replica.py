"""The DuckLake read replica: how analysts read the journey tables while the pipeline runs.

DuckDB lets one process hold a database file; while `cxj run` writes ``--db`` nobody else can
open it, not even read-only (docs/architecture.md, D7). So after every landed batch the writer also
*publishes* that batch to a DuckLake next to the database::

    data/journeys.duckdb                        the writer's authoritative store
    data/journeys.duckdb.lake/catalog.sqlite    DuckLake catalog (SQLite, WAL mode)
    data/journeys.duckdb.lake/data/             Parquet files of the replica

A publish is ONE DuckLake transaction: the events, dead letters and pipeline_batches rows of the
batches after the replica's last published batch, the current offsets, and the rows of the
journeys those batches rewrote or removed (delete + insert by journey id, changed_journeys;
settled journeys a batch left as landed are not copied again). The last published
batch is the largest batch_id in the replica's pipeline_batches, so it is recorded by the same
transaction. Readers attach the lake read-only and see whole batches only (snapshot isolation),
without blocking the writer. Publishing is incremental and idempotent, and the writer catches
the replica up when it starts, so a crash between landing and publishing repairs itself.

Every MERGE_EVERY batches the writer merges a publish's small files, every COMPACT_EVERY batches
it also merges larger ones and expires old snapshots, each time on a connection and a thread of
its own while the next batch runs; the next publish waits for it. Only
`Store` calls this module (pipelines/storage/store.py); pipelines/storage/reader.py attaches the lake for
readers. docs/storage.md explains the choice, the DuckLake workarounds and the measurements.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterable, Optional

import duckdb

from pipelines.storage.quoting import ident, sql_literal

log = logging.getLogger("cxj.replica")


LAKE_ALIAS = "lake"
# Tables copied from the database file, and how each is published.
APPENDED = ("events", "dead_letters", "pipeline_batches", "journey_revisions")  # new rows carry the batch_id that landed them
REPLACED = ("pipeline_offsets", "source_resets", "source_fingerprints")  # small: replaced whole
# Rewritten journey by journey: a publish replaces the rows of the journeys the batches rewrote
# or removed (changed_journeys), and leaves every other journey's rows as they are.
# Each has a batch_id column: the batch that last wrote the row.
PER_CUSTOMER = ("journeys", "journey_events", "journey_metrics", "journey_handoffs")
TABLES = APPENDED + REPLACED + PER_CUSTOMER
META_TABLE = "replica_meta"  # one row: fingerprint (tables), views_fingerprint, rebuilt_at
STATE_TABLE = "replica_state"  # view for readers: published_batch_id, ...
FORMAT_VERSION = 5  # bump to force a rebuild of existing replicas


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


# Full maintenance every COMPACT_EVERY published batches (see Replica.compact): files below
# MERGE_SMALL bytes are merged; every COMPACT_EVERY-th time, files below MERGE_LARGE.
COMPACT_EVERY = _env_int("CXJ_REPLICA_COMPACT_EVERY", 50)  # 0 = never
MERGE_SMALL = 16 * 1024 * 1024
MERGE_LARGE = 256 * 1024 * 1024
# Between two full maintenances, every MERGE_EVERY published batches: the files below MERGE_TINY
# (a publish's own files) are merged and those with a fifth of their rows deleted are rewritten
# (Replica.merge_tiny_files).
MERGE_EVERY = _env_int("CXJ_REPLICA_MERGE_EVERY", 10)  # 0 = never
MERGE_TINY = 1024 * 1024
# Both rewrite a file once this share of its rows is deleted: every publish deletes the rows of
# the journeys its batches recomputed, and DuckLake does not merge a file that has deletes.
REWRITE_DELETED_SHARE = 0.2
# Snapshots older than this are expired at compaction; files only they used are deleted a day
# or two later (see compact()). A reader query may run this long.
DEFAULT_RETENTION_S = 600.0
_RETENTION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(?:(second|minute|hour|day)s?|([smhd]?))\s*", re.IGNORECASE)
_SECONDS_PER = {"second": 1, "minute": 60, "hour": 3600, "day": 86400, "s": 1, "m": 60, "h": 3600, "d": 86400, "": 1}


def retention_seconds(text: Optional[str] = None) -> float:
    """CXJ_REPLICA_RETENTION in seconds: `10 minutes`, `2 hours`, `90s`, `10m` or a bare number.

    Why a parser: the setting comes from the environment, and it reaches SQL only as a bound
    number, never as text pasted into an INTERVAL literal. Anything else raises ValueError.
    """
    text = os.environ.get("CXJ_REPLICA_RETENTION", "") if text is None else text
    if not text.strip():
        return DEFAULT_RETENTION_S
    match = _RETENTION.fullmatch(text)
    if not match:
        raise ValueError(f"CXJ_REPLICA_RETENTION={text[:40]!r} is not a duration like '10 minutes' or 10m")
    return float(match.group(1)) * _SECONDS_PER[(match.group(2) or match.group(3) or "").lower()]
SLOW_PUBLISH_S = 5.0
MAINTENANCE_THREAD = "cxj-replica-maintenance"  # the thread maintenance runs on (Replica._start_maintenance)

# Keeps one SQLite connection open for the life of the writer. In WAL mode the last connection
# to close checkpoints and deletes the WAL, and DuckDB's SQLite extension opens a connection per
# transaction, so without a long-lived one readers and writer keep meeting the SQLite busy
# handler, which in this build sleeps whole seconds (measured: 1-2 s stalls, docs/storage.md).
# A separate process on purpose: two SQLite libraries in one process break each other's locks.
_KEEPALIVE = r"""
import signal, sqlite3, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
con = sqlite3.connect(sys.argv[1], isolation_level=None)
mode = con.execute("PRAGMA journal_mode=WAL").fetchone()[0]
con.execute("SELECT count(*) FROM sqlite_master").fetchall()  # maps the WAL index, holds it open
print(mode, flush=True)
sys.stdin.read()
"""


class ReplicaError(RuntimeError):
    """The replica could not be attached or published."""


def lake_dir(db: Path | str) -> Path:
    db = Path(db)
    return db.parent / f"{db.name}.lake"


def catalog_path(db: Path | str) -> Path:
    return lake_dir(db) / "catalog.sqlite"


def data_path(db: Path | str) -> Path:
    return lake_dir(db) / "data"


def extension_file(name: str) -> Optional[Path]:
    """The extension shipped in the PyPI wheel duckdb-extension-<name> (no download needed)."""
    spec = importlib.util.find_spec("duckdb_extension_" + name)
    if spec is None or not spec.submodule_search_locations:
        return None
    for base in spec.submodule_search_locations:
        exact = Path(base) / "extensions" / f"v{duckdb.__version__}" / f"{name}.duckdb_extension"
        if exact.exists():
            return exact
        found = sorted(Path(base).glob(f"extensions/*/{name}.duckdb_extension"))
        if found:
            return found[-1]
    return None


def load_extensions(con: duckdb.DuckDBPyConnection, postgres: bool = False) -> None:
    """LOADs sqlite_scanner and ducklake from their wheels by path, else the usual way.

    Also turns off multi-threaded SQLite scans for the whole DuckDB instance: DuckLake reads its
    catalog inside one SQLite transaction, but the extra scan threads use connections outside
    it, and a reader then sometimes saw half of a concurrent commit (e.g. a batch's new journey
    rows without the deletion of the old ones; reproduced, docs/storage.md).
    ``postgres``: also postgres_scanner, for a shared lake's PostgreSQL catalog (lake_target.py).
    """
    for name in ("sqlite_scanner", *(("postgres_scanner",) if postgres else ()), "ducklake"):
        path = extension_file(name)
        try:
            if path:
                con.execute(f"LOAD {sql_literal(str(path))}")
            else:
                _load_installed_only(con, name)
        except duckdb.Error as exc:
            raise ReplicaError(
                f"cannot load the DuckDB extension {name!r} ({str(exc).splitlines()[0]}); "
                f"install the wheel duckdb-extension-{name.replace('_', '-')}=={duckdb.__version__}"
            ) from None
    con.execute("SET GLOBAL sqlite_disable_multithreaded_scans = true")


def _load_installed_only(con: duckdb.DuckDBPyConnection, name: str) -> None:
    """LOAD from DuckDB's extension directory, never from the network: a bare LOAD of a missing
    extension would try to download it at run time, which on an offline server stalls start-up
    and elsewhere runs code nobody pinned. The replica is then disabled with one warning."""
    before = con.execute("SELECT current_setting('autoinstall_known_extensions')").fetchone()[0]
    con.execute("SET autoinstall_known_extensions = false")
    try:
        con.execute(f"LOAD {name}")
    finally:
        con.execute(f"SET autoinstall_known_extensions = {'true' if before else 'false'}")


def attach_sql(db: Path | str, alias: str = LAKE_ALIAS, read_only: bool = False) -> str:
    """ATTACH statement for the replica of ``db`` (absolute paths: works from any directory)."""
    catalog = catalog_path(db).resolve()
    data = str(data_path(db).resolve()) + "/"
    options = [f"DATA_PATH {sql_literal(data)}", "OVERRIDE_DATA_PATH TRUE"]
    if read_only:
        options.append("READ_ONLY")
    else:
        # Every change goes to Parquet, none into the SQLite catalog: inlined rows would later
        # have to be flushed, which moves rows while readers may be scanning them.
        options.append("DATA_INLINING_ROW_LIMIT 0")
    return f"ATTACH {sql_literal('ducklake:sqlite:' + str(catalog))} AS {ident(alias)} ({', '.join(options)})"


CHANGED_TABLE = "replica_changed_journeys"  # temp table of the publishing connection


def changed_journeys(source: str, window: str) -> str:
    """The ids of the journeys whose rows the batches in ``window`` rewrote or removed.

    Why this is all that changes: a batch deletes the rows of the journeys it recomputes (the
    touched customers' journeys except the settled ones, store.py) and inserts the recomputed
    ones, stamped with its batch_id in journeys, journey_events, journey_metrics and
    journey_handoffs. A recomputed id that is not inserted again
    disappeared (merged into or split across others), and the batch records it in
    journey_revisions as change = 'removed'. Rows are never updated in place. So every row of
    these tables that was inserted or deleted since the last publish has a journey id in this
    set, and every other journey's rows are exactly as published. ``source`` is an ident()-quoted
    database name, ``window`` a condition on batch_id built from ints.
    """
    return (f"SELECT journey_id FROM {source}.journeys WHERE {window} "
            f"UNION SELECT journey_id FROM {source}.journey_metrics WHERE {window} "
            f"UNION SELECT journey_id FROM {source}.journey_handoffs WHERE {window} "
            f"UNION SELECT journey_id FROM {source}.journey_revisions WHERE {window} AND change = 'removed'")


def view_statements() -> list[str]:
    """The model views of sql/models and the comments of the tables and views (DuckLake keeps
    no comments on a view's columns), rendered by pipelines/storage/models.py exactly as in the store."""
    from pipelines.storage.models import catalog_statements, load_docs

    # landing tables the replica does not publish (conflicts, attempts, ...) get no comments here
    absent = [ident(t) for t in sorted(set(load_docs().tables) - set(TABLES))]
    return [s for s in catalog_statements(view_columns=False)
            if not any(s.startswith((f"COMMENT ON TABLE {t} ", f"COMMENT ON COLUMN {t}.")) for t in absent)]


# What readers query to see how current the replica is.
STATE_VIEW = f"""
CREATE OR REPLACE VIEW {STATE_TABLE} AS
SELECT b.batch_id AS published_batch_id,         -- last batch published (0: none yet)
       b.started_at AS published_batch_started_at,
       b.finished_at AS published_batch_finished_at,  -- when it was landed (published right after)
       m.rebuilt_at,                               -- when the replica was last built from scratch
       m.fingerprint,                              -- version of the tables it was built for
       m.views_fingerprint                         -- version of the sql/ views it has
FROM {META_TABLE} m
LEFT JOIN (SELECT coalesce(max(batch_id), 0) AS batch_id, max_by(started_at, batch_id) AS started_at,
                  max_by(finished_at, batch_id) AS finished_at
           FROM pipeline_batches) b ON true
"""


SIDECAR = "published.json"  # the database's summary as of the last verified publish (for `cxj status`)


def read_summary(con: "duckdb.DuckDBPyConnection | object", prefix: str = "", where: str = "") -> dict[str, int]:
    """Row counts of every table, last batch, landed total and sum of the stored offsets.

    Computed the same way on the database and on the replica, so any difference means the
    replica does not show what the database landed (a failed publish, or tampering). Small
    separate queries: measured faster than one query of scalar subqueries on a busy machine.
    Call it inside one transaction (or on a reader, whose statements each see one snapshot)
    when the copy may change meanwhile. ``where``: a condition on every table (a shared lake's
    rows of one writer, see shared_lake.py).
    """
    condition = f" WHERE {where}" if where else ""
    summary = {t: int(con.execute(f"SELECT count(*) FROM {prefix}{t}{condition}").fetchone()[0]) for t in TABLES}
    last, landed = con.execute(
        f"SELECT coalesce(max(batch_id), 0), coalesce(sum(landed), 0) FROM {prefix}pipeline_batches{condition}").fetchone()
    offsets = con.execute(f"SELECT coalesce(sum(next_offset), 0) FROM {prefix}pipeline_offsets{condition}").fetchone()[0]
    summary.update(last_batch=int(last), landed_total=int(landed), offsets_total=int(offsets))
    return summary


def summary_differences(replica: dict[str, int], database: dict[str, int]) -> list[str]:
    """Human-readable differences, e.g. ['journeys 40 (database 42)']; empty when equal."""
    return [f"{key} {replica.get(key)} (database {value})" for key, value in database.items() if replica.get(key) != value]


def read_sidecar(db: Path | str) -> Optional[dict[str, int]]:
    try:
        data = json.loads((lake_dir(db) / SIDECAR).read_text())
    except (OSError, ValueError):
        return None
    return data.get("summary") if isinstance(data, dict) else None


def _write_sidecar(db: Path, summary: dict[str, int]) -> None:
    target = lake_dir(db) / SIDECAR
    temporary = target.with_suffix(".tmp")
    temporary.write_text(json.dumps({"summary": summary, "written_at": time.time()}))
    os.replace(temporary, target)


@dataclass
class PublishResult:
    first_batch: int
    last_batch: int
    customers: int
    seconds: float
    rebuilt: bool = False


def enabled() -> bool:
    """The writer publishes unless CXJ_REPLICA=0 (e.g. a batch-only job nobody reads while it runs)."""
    return os.environ.get("CXJ_REPLICA", "1").strip().lower() not in {"0", "false", "off", "no"}


def open_writer_replica(con: duckdb.DuckDBPyConnection, db: Path | str, lake: Optional[object] = None,
                        writer_id: Optional[str] = None) -> Optional["Replica"]:
    """Attaches the replica of ``db`` and catches it up; on failure warns and returns None
    (the pipeline keeps landing; readers then cannot read while it runs).

    ``lake`` (a lake_target.LakeTarget): publish to that shared lake instead of the local
    replica, as writer ``writer_id`` (shared_lake.py)."""
    if not enabled():
        return None
    try:
        if lake is not None:
            from pipelines.storage.shared_lake import SharedLake

            replica: Replica = SharedLake(con, db, lake, writer_id)  # type: ignore[arg-type]
        else:
            replica = Replica(con, db)
    except (ReplicaError, duckdb.Error, OSError) as exc:
        if lake is not None:  # asked for by name: landing where no reader looks would be a silent failure
            raise ReplicaError(str(exc).splitlines()[0]) from None
        log.warning("read replica disabled: %s", str(exc).splitlines()[0])
        return None
    replica.after_land()
    return replica


class Replica:
    """Publishes landed batches of one database file to its DuckLake replica (writer side)."""

    # the view that tells readers what the replica holds (a shared lake has its own, per writer)
    state_view: str = STATE_VIEW

    def __init__(self, con: duckdb.DuckDBPyConnection, db: Path | str, compact_every: int = COMPACT_EVERY) -> None:
        self.db = Path(db)
        self.compact_every = compact_every
        self.source = ident(con.execute("SELECT current_database()").fetchone()[0])
        self.con = con.cursor()  # own connection: its USE and transactions never touch the store's
        self.con.execute("SET TimeZone = 'UTC'")
        self._keepalive: Optional[subprocess.Popen] = None
        self._attached_catalog: Optional[tuple[int, int]] = None  # (device, inode) of the catalog attached
        self._caught_up = False
        self._fingerprint_cache: Optional[str] = None
        self._since_compact = 0
        self._since_merge = 0
        self.merge_every = MERGE_EVERY
        self._compactions = 0
        self._maintenance: Optional[threading.Thread] = None  # the maintenance running beside the cycle
        self._maintenance_cursor: Optional[duckdb.DuckDBPyConnection] = None
        self.publish_seconds: list[float] = []  # since the last maintenance (for its log line)
        # by landed batch: the batch ids the journeys it rewrote had before (note_rewritten)
        self._rewritten_from: dict[int, Optional[frozenset[int]]] = {}
        self._open()

    # ------------------------------------------------------------------ setup

    def _open(self) -> None:
        lake_dir(self.db).mkdir(parents=True, exist_ok=True)
        data_path(self.db).mkdir(exist_ok=True)
        self._start_keepalive()
        try:
            load_extensions(self.con)
            self.con.execute(attach_sql(self.db))
            self._attached_catalog = self._catalog_identity()
        except (duckdb.Error, ReplicaError) as exc:
            self.close()
            raise ReplicaError(f"cannot attach the replica {catalog_path(self.db)}: {str(exc).splitlines()[0]}") from None

    def _start_keepalive(self) -> None:
        self._keepalive = subprocess.Popen(
            [sys.executable, "-c", _KEEPALIVE, str(catalog_path(self.db))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        mode = (self._keepalive.stdout.readline() if self._keepalive.stdout else "").strip()
        if mode != "wal":
            log.warning("replica catalog %s is not in WAL mode (%r): readers may stall the writer",
                        catalog_path(self.db), mode)

    def close(self) -> None:
        self.wait_for_maintenance()
        for con in (self._maintenance_cursor, self.con):
            try:
                if con is not None:
                    con.close()
            except duckdb.Error:
                pass
        self._maintenance_cursor = None
        self._stop_keepalive()

    def _stop_keepalive(self) -> None:
        if self._keepalive is not None:
            try:
                if self._keepalive.stdin:
                    self._keepalive.stdin.close()
                self._keepalive.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self._keepalive.kill()
            self._keepalive = None

    def _catalog_identity(self) -> Optional[tuple[int, int]]:
        try:
            info = os.stat(catalog_path(self.db))
        except OSError:
            return None
        return info.st_dev, info.st_ino

    def _recreate_if_deleted(self) -> None:
        """Re-creates the replica when its catalog was deleted or replaced under the writer.

        The writer's keep-alive connection holds the old catalog open, so publishing could go on
        "succeeding" into a file no reader can find (or fail on every batch forever while promising
        a retry). A new replica is built from the database instead, with one warning.
        """
        if self._catalog_identity() == self._attached_catalog:
            return
        log.warning("replica %s was deleted or replaced while the pipeline ran: re-creating it from %s",
                    lake_dir(self.db), self.db)
        try:
            self.con.execute(f"DETACH {LAKE_ALIAS}")
        except duckdb.Error:
            pass
        self._stop_keepalive()
        self._caught_up = False
        self._open()

    # ------------------------------------------------------------------ state

    def _fingerprint(self) -> str:
        """Changes when the landing tables' columns change (or FORMAT_VERSION): then rebuild."""
        if self._fingerprint_cache is None:
            columns = [(t, self.con.execute(f"DESCRIBE {self.source}.{t}").fetchall()) for t in TABLES]
            self._fingerprint_cache = hashlib.sha256(f"format {FORMAT_VERSION}\n{columns!r}".encode()).hexdigest()[:16]
        return self._fingerprint_cache

    def _views_fingerprint(self) -> str:
        """Changes when a view file in sql/ changes: then the views are replaced."""
        digest = hashlib.sha256(self.state_view.encode())
        for statement in view_statements():
            digest.update(statement.encode() + b"\0")
        return digest.hexdigest()[:16]

    def _state(self) -> Optional[tuple[int, Optional[datetime], str, str]]:
        """(published batch id, its started_at, fingerprint, views fingerprint); None if empty."""
        try:
            row = self.con.execute(
                f"""SELECT published_batch_id, published_batch_started_at, fingerprint, views_fingerprint
                    FROM {LAKE_ALIAS}.{STATE_TABLE}"""
            ).fetchone()
        except duckdb.Error:  # no replica yet, or one of an older format
            return None
        return None if row is None else (int(row[0]), row[1], str(row[2]), str(row[3]))

    def published_batch_id(self) -> int:
        state = self._state()
        return state[0] if state else 0

    def _last_landed(self) -> int:
        return int(self.con.execute(f"SELECT coalesce(max(batch_id), 0) FROM {self.source}.pipeline_batches").fetchone()[0])

    def _needs_rebuild(self, state: Optional[tuple[int, Optional[datetime], str, str]]) -> Optional[str]:
        if state is None:
            return "new replica"
        published, started_at, fingerprint, _views = state
        if fingerprint != self._fingerprint():
            return "table columns changed"
        last = self._last_landed()
        if published > last:
            return f"it shows batch {published}, the database has landed only up to {last}"
        if published == 0:
            return None
        row = self.con.execute(
            f"SELECT started_at FROM {self.source}.pipeline_batches WHERE batch_id = {int(published)}"
        ).fetchone()
        if row is None or row[0] != started_at:
            return f"its batch {published} is not the database's batch {published}"
        return None

    # ------------------------------------------------------------------ publishing

    def after_land(self) -> Optional[PublishResult]:
        """Catch-up/publish that never fails the caller: a failed publish is retried next time.

        When maintenance is due it starts beside the cycle (``_start_maintenance``) and this
        returns; the next call waits for it first, so publishes and maintenance never overlap."""
        self.wait_for_maintenance()
        try:
            self._recreate_if_deleted()
            if not self._caught_up:
                result = self.catch_up()
                self._caught_up = True
            else:
                result = self.publish()
            result = self.verify() or result
        except (duckdb.Error, OSError, ReplicaError) as exc:
            log.warning("replica %s: publish failed, will retry after the next batch: %s",
                        lake_dir(self.db), str(exc).splitlines()[0])
            return None
        if result is not None and self.compact_every:
            batches = max(1, result.last_batch - result.first_batch + 1)
            self._since_compact += batches
            self._since_merge += batches
            if self._since_compact >= self.compact_every:
                self._since_compact = self._since_merge = 0
                self._start_maintenance(self.compact)
            elif self.merge_every and self._since_merge >= self.merge_every:
                self._since_merge = 0
                self._start_maintenance(self.merge_tiny_files)
        return result

    def catch_up(self) -> Optional[PublishResult]:
        """Publishes every landed batch the replica lacks (or rebuilds it); None if up to date."""
        state = self._state()
        reason = self._needs_rebuild(state)
        if reason is not None:
            return self._rebuild(reason)
        if state is not None and state[3] != self._views_fingerprint():
            self._replace_views()
        return self.publish()

    def verify(self) -> Optional[PublishResult]:
        """Compares the replica with the database; rebuilds it when they disagree.

        Catches whatever left the replica showing something else than the database landed —
        someone writing to its catalog or files out of band (e.g. a fake pipeline_batches row,
        which would otherwise stop every later publish), or a publish lost half-way. Then
        records the database's summary next to the catalog for `cxj status`.
        """
        database = read_summary(self.con, f"{self.source}.")
        differences = summary_differences(self._lake_summary(), database)
        result = None
        if differences:
            log.warning("replica %s disagrees with the database (%s): rebuilding it",
                        lake_dir(self.db), "; ".join(differences))
            result = self._rebuild("it disagreed with the database")
            differences = summary_differences(self._lake_summary(), database)
            if differences:
                raise ReplicaError(f"replica still disagrees after a rebuild: {'; '.join(differences)}")
        _write_sidecar(self.db, database)
        return result

    def _lake_summary(self) -> dict[str, int]:
        """The replica's read_summary in one read-only transaction: all counts from one snapshot,
        and DuckLake reads its catalog once for them instead of once per statement."""
        self.con.execute("BEGIN TRANSACTION")
        try:
            return read_summary(self.con, f"{LAKE_ALIAS}.")
        finally:
            _rollback(self.con)

    def _create_views(self) -> None:
        """Inside the caller's transaction: the state view and every view file, in the lake."""
        self.con.execute(f"USE {LAKE_ALIAS}")
        try:
            self.con.execute(self.state_view)
            for statement in view_statements():
                self.con.execute(statement)
        finally:
            self.con.execute(f"USE {self.source}")

    def _replace_views(self) -> None:
        """Replaces all views of the replica with the current sql/ files, in one transaction."""
        log.info("replica %s: views changed, replacing them", lake_dir(self.db))
        con = self.con
        con.execute("BEGIN TRANSACTION")
        try:
            for (name,) in con.execute(
                f"SELECT view_name FROM duckdb_views() WHERE database_name = {sql_literal(LAKE_ALIAS)} AND NOT internal"
            ).fetchall():
                con.execute(f"DROP VIEW IF EXISTS {LAKE_ALIAS}.{ident(name)}")
            self._create_views()
            con.execute(f"UPDATE {LAKE_ALIAS}.{META_TABLE} SET views_fingerprint = {sql_literal(self._views_fingerprint())}")
            con.execute("COMMIT")
        except BaseException:
            _rollback(con)
            raise

    def note_rewritten(self, batch_id: int, previous_batches: Optional[Iterable[int]]) -> None:
        """After the landing of ``batch_id`` committed: the batch ids that the rows of the journeys
        it rewrote or removed carried before (a superset will do), or None when the store did not
        look them up. A publish whose batches all have them deletes the replica's old rows of the
        changed journeys by those batch ids, which DuckLake's per-file and DuckDB's per-row-group
        statistics skip by, instead of reading every data file's journey ids (_publish_journeys)."""
        self._rewritten_from[int(batch_id)] = None if previous_batches is None else frozenset(int(b) for b in previous_batches)

    def _previous_batches(self, published: int, last: int) -> Optional[frozenset[int]]:
        """The batch ids the replica's rows of the journeys that batches ``published + 1`` to
        ``last`` changed can carry: each such row was published by a batch at most ``published``
        and is the row its journey had before the first of those batches rewrote it, so its batch
        id is one that batch noted. None unless every batch noted them (after a restart, the
        batches landed before it did not)."""
        noted = [self._rewritten_from.get(b) for b in range(published + 1, last + 1)]
        if not noted or any(ids is None for ids in noted):
            return None
        return frozenset().union(*noted)

    def publish(self) -> Optional[PublishResult]:
        """One DuckLake transaction with all batches after the last published one."""
        started = time.perf_counter()
        con = self.con
        last = self._last_landed()
        con.execute("BEGIN TRANSACTION")
        try:
            # the last published batch is recorded by the batch rows this very transaction appends
            published = int(con.execute(f"SELECT coalesce(max(batch_id), 0) FROM {LAKE_ALIAS}.pipeline_batches").fetchone()[0])
            if last <= published:
                con.execute("ROLLBACK")
                return None
            window = f"batch_id > {published} AND batch_id <= {last}"
            touched = (f"SELECT customer_id FROM {self.source}.events WHERE {window} "
                       f"UNION SELECT customer_id FROM {self.source}.journeys WHERE {window} "
                       # an event a winning copy moved to another customer leaves the old one's journeys
                       f"UNION SELECT old_customer_id FROM {self.source}.event_replacements WHERE {window}")
            customers = int(con.execute(f"SELECT count(*) FROM ({touched})").fetchone()[0])
            # a landed event can be replaced by a winning copy (docs/metrics.md): drop the old version
            replaced = f"SELECT event_id FROM {self.source}.event_replacements WHERE {window}"
            if con.execute(f"SELECT count(*) FROM ({replaced})").fetchone()[0]:
                con.execute(f"DELETE FROM {LAKE_ALIAS}.events WHERE event_id IN ({replaced})")
            for table in APPENDED:
                con.execute(f"INSERT INTO {LAKE_ALIAS}.{table} SELECT * FROM {self.source}.{table} WHERE {window}")
            for table in REPLACED:
                con.execute(f"DELETE FROM {LAKE_ALIAS}.{table}")
                con.execute(f"INSERT INTO {LAKE_ALIAS}.{table} SELECT * FROM {self.source}.{table}")
            self._publish_journeys(window, previous_batches=self._previous_batches(published, last))
            con.execute("COMMIT")
        except BaseException:
            _rollback(con)
            raise
        return self._done(published + 1, last, customers, started, rebuilt=False)

    def _publish_journeys(self, window: str, mine: str = "", writer_column: str = "",
                          previous_batches: Optional[frozenset[int]] = None) -> int:
        """Inside the publishing transaction: replaces the rows of the journeys the batches in
        ``window`` rewrote or removed (changed_journeys), in every PER_CUSTOMER table, and no
        others. Returns how many journey ids that was.

        Why not per customer: a batch leaves a long history's settled journeys as landed, so
        re-copying every row of every touched customer made a small batch for a customer with
        200k events copy 200k rows. ``mine``: a shared lake's condition on its writer's rows;
        ``writer_column``: its rows' writer column (``'<id>' AS writer_id``), see shared_lake.py.
        ``previous_batches``: the batch ids the replica's rows of those journeys can carry
        (``_previous_batches``); the deletes then read only the files and row groups that hold
        them (a 5,000-event batch's deletes on a replica of 8.3M links: 0.2 s by journey id alone).
        """
        con = self.con
        con.execute(f"CREATE OR REPLACE TEMP TABLE {CHANGED_TABLE} AS {changed_journeys(self.source, window)}")
        changed = int(con.execute(f"SELECT count(*) FROM {CHANGED_TABLE}").fetchone()[0])
        if not changed:
            return 0
        ids = f"SELECT journey_id FROM {CHANGED_TABLE}"
        old_rows = f"batch_id IN ({', '.join(str(int(b)) for b in sorted(previous_batches))}) AND " if previous_batches else ""
        # no previous batch at all: every changed journey is new, the replica holds no row of them
        nothing_to_delete = previous_batches is not None and not previous_batches
        log.debug("replica: old rows of %d changed journeys %s", changed,
                  "read by journey id" if previous_batches is None else f"in {len(previous_batches)} earlier batches")
        for table in PER_CUSTOMER:
            if not nothing_to_delete:
                con.execute(f"DELETE FROM {LAKE_ALIAS}.{table} WHERE {mine + ' AND ' if mine else ''}{old_rows}journey_id IN ({ids})")
            columns = f"BY NAME SELECT *, {writer_column}" if writer_column else "SELECT *"
            # A changed journey's rows were all written by the latest batch that recomputed it,
            # one of the window's: the window lets DuckDB's min-max index skip every row group
            # landed before (a scan of the whole table otherwise)
            con.execute(f"INSERT INTO {LAKE_ALIAS}.{table} {columns} FROM {self.source}.{table} "
                        f"WHERE {window} AND journey_id IN ({ids})")
        return changed

    def _rebuild(self, reason: str) -> PublishResult:
        """Replaces every replica table and view with the database's, in one transaction."""
        started = time.perf_counter()
        con = self.con
        last = self._last_landed()
        log.info("replica %s: full rebuild (%s)", lake_dir(self.db), reason)
        con.execute("BEGIN TRANSACTION")
        try:
            existing = con.execute(
                f"SELECT table_name, table_type FROM information_schema.tables WHERE table_catalog = {sql_literal(LAKE_ALIAS)}"
            ).fetchall()
            for name, kind in sorted(existing, key=lambda e: e[1] != "VIEW"):  # views first
                con.execute(f"DROP {'VIEW' if kind == 'VIEW' else 'TABLE'} IF EXISTS {LAKE_ALIAS}.{ident(name)}")
            for table in TABLES:
                con.execute(f"CREATE TABLE {LAKE_ALIAS}.{table} AS SELECT * FROM {self.source}.{table}")
            con.execute(
                f"CREATE TABLE {LAKE_ALIAS}.{META_TABLE} (fingerprint VARCHAR, views_fingerprint VARCHAR, rebuilt_at TIMESTAMPTZ)"
            )
            con.execute(
                f"INSERT INTO {LAKE_ALIAS}.{META_TABLE} VALUES "
                f"({sql_literal(self._fingerprint())}, {sql_literal(self._views_fingerprint())}, now())"
            )
            self._create_views()
            customers = int(con.execute(f"SELECT count(DISTINCT customer_id) FROM {self.source}.journeys").fetchone()[0])
            con.execute("COMMIT")
        except BaseException:
            _rollback(con)
            raise
        return self._done(1 if last else 0, last, customers, started, rebuilt=True)

    def _done(self, first: int, last: int, customers: int, started: float, rebuilt: bool) -> PublishResult:
        seconds = time.perf_counter() - started
        for batch_id in [b for b in self._rewritten_from if b <= last]:  # published: never needed again
            del self._rewritten_from[batch_id]
        if not rebuilt:
            self.publish_seconds.append(seconds)
        (log.warning if seconds > SLOW_PUBLISH_S else log.debug)(
            "replica: published batches %d-%d (%d customers) in %.3fs", first, last, customers, seconds)
        return PublishResult(first, last, customers, seconds, rebuilt)

    # ------------------------------------------------------------------ maintenance

    def _start_maintenance(self, work: Callable[[], object]) -> None:
        """Runs ``work`` (``compact`` or ``merge_tiny_files``) on a thread of its own, beside
        the next batch.

        Why: maintenance took 0.4-1.1 s (growing with the files it merges), and inside the cycle
        it delayed every record waiting for the next batch by that much: in a 60-second run at
        2,000 events/s, the one batch behind it held 5% of the events and set the p99
        (docs/performance.md, "Replica maintenance beside the cycle"). The batch's work is
        the pipeline's and the store's; maintenance touches only the lake, through its own
        connection (``_maintenance_con``). The next publish waits for it (``after_land``), so
        the lake sees the same sequence as before: publish, maintenance, publish."""
        self._maintenance_con()  # made here, on the thread that owns the publishing connection
        self._maintenance = threading.Thread(target=self._maintain, args=(work,), name=MAINTENANCE_THREAD)
        self._maintenance.start()

    def _maintain(self, work: Callable[[], object]) -> None:
        """The maintenance thread: ``work`` (``compact`` or ``merge_tiny_files``), whose failures
        are logged, never raised."""
        try:
            work()
        except Exception as exc:  # noqa: BLE001 (logged here: a thread's failure reaches no caller)
            log.warning("replica %s: maintenance failed, tried again at the next one: %s", lake_dir(self.db), exc)

    def wait_for_maintenance(self) -> None:
        """Returns once no maintenance runs (at once when none was started)."""
        if self._maintenance is not None:
            self._maintenance.join()
            self._maintenance = None

    def _maintenance_con(self) -> duckdb.DuckDBPyConnection:
        """The connection maintenance runs on: a cursor of the publishing one (same DuckDB
        instance, so the lake is attached), never used by two threads at once."""
        if self._maintenance_cursor is None:
            cursor = self.con.cursor()
            cursor.execute("SET TimeZone = 'UTC'")  # _expire's day boundary
            cursor.execute("SET enable_progress_bar = false")
            self._maintenance_cursor = cursor
        return self._maintenance_cursor

    def merge_tiny_files(self) -> float:
        """Merges the files below MERGE_TINY and rewrites those with a fifth of their rows
        deleted (DuckLake does not merge a file that has deletes). Why: each publish writes a
        file per table it changes, and deletes rows of the journeys its batches recomputed
        from files published before; its deletes and its commit then work on every live file
        with deletes, so each publish cost more than the last until the next ``compact``
        (docs/performance.md, "Where a following cycle's publish goes, and why it grows").
        Once a merged file passes MERGE_TINY it is left to the next ``compact``, which keeps
        the disk this step adds small (docs/storage.md, Maintenance)."""
        started = time.perf_counter()
        merged = self._merge_and_rewrite(MERGE_TINY)
        seconds = time.perf_counter() - started
        log.info("replica %s: %d small files merged in %.2fs", lake_dir(self.db), merged, seconds)
        return seconds

    def _merge_and_rewrite(self, max_file_size: int) -> int:
        """Merges the files below ``max_file_size`` and rewrites those with REWRITE_DELETED_SHARE
        of their rows deleted, on the maintenance connection; returns the files replaced. A
        failed step is logged and skipped: maintenance must never stop the pipeline."""
        lake = sql_literal(LAKE_ALIAS)
        replaced = 0
        for statement in (f"CALL ducklake_merge_adjacent_files({lake}, max_file_size => {max_file_size})",
                          f"CALL ducklake_rewrite_data_files({lake}, delete_threshold => {REWRITE_DELETED_SHARE})"):
            try:
                replaced += sum(int(r[2]) for r in self._maintenance_con().execute(statement).fetchall() if len(r) > 2)
            except (duckdb.Error, ValueError, TypeError) as exc:
                log.warning("replica maintenance step failed (%s): %s", statement.split("(")[0], str(exc).splitlines()[0])
        return replaced

    def compact(self) -> float:
        """DuckLake maintenance: merge small files, rewrite files with many deleted rows, expire
        old snapshots, delete files no snapshot needs. Never fails the pipeline.

        merge_adjacent_files only merges files below a size (else it would rewrite the table's
        big file every time): below MERGE_SMALL every COMPACT_EVERY publishes, below MERGE_LARGE
        every COMPACT_EVERY**2. Readers keep reading the files of their snapshot: replaced files
        are deleted only after their snapshots expired and a day has passed (see _expire()).
        """
        started = time.perf_counter()
        self._compactions += 1
        large = self.compact_every > 0 and self._compactions % self.compact_every == 0
        merged = self._merge_and_rewrite(MERGE_LARGE if large else MERGE_SMALL)
        expired = self._expire()
        seconds = time.perf_counter() - started
        times = sorted(self.publish_seconds)
        self.publish_seconds = []
        log.info(
            "replica %s: maintenance in %.2fs (%d files compacted, %d snapshots expired); "
            "%d publishes since the last: median %.3fs, max %.3fs",
            lake_dir(self.db), seconds, merged, expired,
            len(times), statistics.median(times) if times else 0.0, times[-1] if times else 0.0,
        )
        return seconds

    def _expire(self) -> int:
        """Expires snapshots older than CXJ_REPLICA_RETENTION and deletes files unused since before yesterday.

        Workaround for DuckLake 1.5.5 on SQLite: ``older_than`` compares only the calendar day
        there (a snapshot from a second ago counts as older than now() - 10 minutes), so the
        snapshots are chosen here and passed by id, and file cleanup uses a day boundary.
        """
        lake = sql_literal(LAKE_ALIAS)
        try:
            retention_s = retention_seconds()
        except ValueError as exc:
            log.warning("%s; using %.0f s", exc, DEFAULT_RETENTION_S)
            retention_s = DEFAULT_RETENTION_S
        con = self._maintenance_con()
        try:
            ids = [int(r[0]) for r in con.execute(
                f"""SELECT snapshot_id FROM ducklake_snapshots({lake})
                    WHERE snapshot_time < now() - to_microseconds(?)
                      AND snapshot_id < (SELECT max(snapshot_id) FROM ducklake_snapshots({lake}))
                    ORDER BY snapshot_id""",
                [int(retention_s * 1_000_000)],
            ).fetchall()]
            if ids:
                con.execute(f"CALL ducklake_expire_snapshots({lake}, versions => {ids})").fetchall()
            con.execute(
                f"CALL ducklake_cleanup_old_files({lake}, "
                "older_than => date_trunc('day', now() - INTERVAL 1 DAY) - INTERVAL 1 MICROSECOND)"
            ).fetchall()
            return len(ids)
        except duckdb.Error as exc:  # maintenance must never stop the pipeline
            log.warning("replica snapshot expiry failed: %s", str(exc).splitlines()[0])
            return 0


def _rollback(con: duckdb.DuckDBPyConnection) -> None:
    try:
        con.execute("ROLLBACK")
    except duckdb.Error:
        pass
