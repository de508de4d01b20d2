"""The DuckLake read replica: how analysts read the journey tables while the pipeline runs.

DuckDB lets one process hold a database file; while `cxj run` writes ``--db`` nobody else can
open it, not even read-only (DESIGN fact 7). So after every landed batch the writer also
*publishes* that batch to a DuckLake next to the database::

    data/journeys.duckdb                    the writer's authoritative store
    data/journeys.duckdb.lake/catalog.sqlite   DuckLake catalog (SQLite, WAL mode)
    data/journeys.duckdb.lake/data/         Parquet files of the replica

A publish is ONE DuckLake transaction: the events, dead letters and batch rows of the batches
after the replica's last published batch, the current offsets, the journeys and journey_events
of every customer those batches touched (delete + insert), and the new last published batch id.
Readers attach the lake read-only and see whole batches only (snapshot isolation), never
blocking the writer. Publishing is incremental and idempotent, and the writer catches the
replica up when it starts, so a crash between landing and publishing repairs itself.

Only `Store` calls this module (see ``pipelines/store.py``); ``pipelines/reader.py`` attaches the
lake for readers. docs/storage.md explains the choice.
"""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import duckdb

log = logging.getLogger("cxj.replica")

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
VIEW_LAYERS = ("staging", "core", "marts")

LAKE_ALIAS = "lake"
# Tables copied from the database file, and how each is published.
APPENDED = ("events", "dead_letters", "pipeline_batches")  # new rows carry the batch_id that landed them
REPLACED = ("pipeline_offsets",)  # small: replaced whole
PER_CUSTOMER = ("journeys", "journey_events")  # rewritten for the customers a batch touched
TABLES = APPENDED + REPLACED + PER_CUSTOMER
STATE_TABLE = "replica_state"
LOG_TABLE = "replica_publishes"
FORMAT_VERSION = 1  # bump to force a rebuild of existing replicas

# Maintenance: merge small files and forget old snapshots every so many publishes. Snapshots
# (and the files only they use) are kept this long, so a reader query may run that long.
COMPACT_EVERY = 50
RETENTION = "10 minutes"

# Keeps one SQLite connection open for the life of the writer: in WAL mode the last connection
# to close checkpoints and deletes the WAL, and DuckDB's SQLite opens a connection per
# transaction; without a long-lived one, readers and the writer keep meeting SQLite's
# 1-second busy sleeps (measured: reader stalls of 1-2 s, see docs/storage.md).
_KEEPALIVE = r"""
import signal, sqlite3, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
con = sqlite3.connect(sys.argv[1], isolation_level=None)
print(con.execute("PRAGMA journal_mode=WAL").fetchone()[0], flush=True)
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


def sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def extension_file(name: str) -> Optional[Path]:
    """The extension shipped in the PyPI wheel duckdb-extension-<name> (no download needed)."""
    package = "duckdb_extension_" + name
    spec = importlib.util.find_spec(package)
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


def load_extensions(con: duckdb.DuckDBPyConnection) -> None:
    """LOADs sqlite_scanner and ducklake from their wheels by path, else the usual way."""
    for name in ("sqlite_scanner", "ducklake"):
        path = extension_file(name)
        try:
            con.execute(f"LOAD {sql_literal(str(path))}" if path else f"LOAD {name}")
        except duckdb.Error as exc:
            raise ReplicaError(
                f"cannot load the DuckDB extension {name!r} ({str(exc).splitlines()[0]}); "
                f"install the wheel duckdb-extension-{name.replace('_', '-')}=={duckdb.__version__}"
            ) from None


def attach_sql(db: Path | str, alias: str = LAKE_ALIAS, read_only: bool = False) -> str:
    """ATTACH statement for the replica of ``db`` (absolute paths: works from any directory)."""
    catalog = catalog_path(db).resolve()
    data = str(data_path(db).resolve()) + "/"
    options = [f"DATA_PATH {sql_literal(data)}", "OVERRIDE_DATA_PATH TRUE"]
    if read_only:
        options.append("READ_ONLY")
    return f"ATTACH {sql_literal('ducklake:sqlite:' + str(catalog))} AS {ident(alias)} ({', '.join(options)})"


def view_files() -> list[Path]:
    return [f for layer in VIEW_LAYERS for f in sorted((SQL_DIR / layer).glob("*.sql"))]


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


def open_writer_replica(con: duckdb.DuckDBPyConnection, db: Path | str) -> Optional["Replica"]:
    """Attaches the replica of ``db`` and catches it up; on failure warns and returns None
    (the pipeline keeps landing; readers then cannot read while it runs)."""
    if not enabled():
        return None
    try:
        replica = Replica(con, db)
    except (ReplicaError, duckdb.Error, OSError) as exc:
        log.warning("read replica disabled: %s", str(exc).splitlines()[0])
        return None
    replica.after_land()
    return replica


class Replica:
    """Publishes landed batches of one database file to its DuckLake replica (writer side)."""

    def __init__(self, con: duckdb.DuckDBPyConnection, db: Path | str, compact_every: int = COMPACT_EVERY) -> None:
        self.db = Path(db)
        self.compact_every = compact_every
        self.source = ident(con.execute("SELECT current_database()").fetchone()[0])
        self.con = con.cursor()  # own connection: its USE and transactions never touch the store's
        self.con.execute("SET TimeZone = 'UTC'")
        self._keepalive: Optional[subprocess.Popen] = None
        self._since_compact = 0
        self._caught_up = False
        self._fingerprint_cache: Optional[str] = None
        self.publish_seconds: list[float] = []
        self._open()

    # ------------------------------------------------------------------ setup

    def _open(self) -> None:
        lake_dir(self.db).mkdir(parents=True, exist_ok=True)
        data_path(self.db).mkdir(exist_ok=True)
        self._start_keepalive()
        load_extensions(self.con)
        try:
            self.con.execute(attach_sql(self.db))
        except duckdb.Error as exc:
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
        try:
            self.con.close()
        except duckdb.Error:
            pass
        if self._keepalive is not None:
            try:
                if self._keepalive.stdin:
                    self._keepalive.stdin.close()
                self._keepalive.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self._keepalive.kill()
            self._keepalive = None

    # ------------------------------------------------------------------ state

    def _fingerprint(self) -> str:
        """Changes when the landing tables' columns or the view definitions change."""
        if self._fingerprint_cache is None:
            self._fingerprint_cache = self._compute_fingerprint()
        return self._fingerprint_cache

    def _compute_fingerprint(self) -> str:
        columns = [(t, self.con.execute(f"DESCRIBE {self.source}.{t}").fetchall()) for t in TABLES]
        digest = hashlib.sha256(f"format {FORMAT_VERSION}\n{columns!r}".encode())
        for view in view_files():
            digest.update(view.name.encode() + b"\0" + view.read_bytes())
        return digest.hexdigest()[:16]

    def _state(self) -> Optional[tuple[int, Optional[datetime], str]]:
        """(published batch id, its started_at, fingerprint), or None if the lake is empty."""
        try:
            row = self.con.execute(
                f"SELECT published_batch_id, published_batch_started_at, fingerprint FROM {LAKE_ALIAS}.{STATE_TABLE}"
            ).fetchone()
        except duckdb.CatalogException:
            return None
        return row if row is None else (int(row[0]), row[1], str(row[2]))

    def published_batch_id(self) -> int:
        state = self._state()
        return state[0] if state else 0

    def _needs_rebuild(self, state: Optional[tuple[int, Optional[datetime], str]]) -> Optional[str]:
        if state is None:
            return "new replica"
        published, started_at, fingerprint = state
        if fingerprint != self._fingerprint():
            return "table columns or views changed"
        if published == 0:
            return None
        row = self.con.execute(
            f"SELECT started_at FROM {self.source}.pipeline_batches WHERE batch_id = {int(published)}"
        ).fetchone()
        if row is None or row[0] != started_at:
            return f"batch {published} of the replica is not the database's batch {published}"
        return None

    # ------------------------------------------------------------------ publishing

    def catch_up(self) -> Optional[PublishResult]:
        """Publishes every landed batch the replica lacks (or rebuilds it); None if up to date."""
        state = self._state()
        reason = self._needs_rebuild(state)
        if reason is not None:
            return self._rebuild(reason)
        return self.publish()

    def after_land(self) -> Optional[PublishResult]:
        """Catch-up/publish that never fails the caller: a failed publish is retried next time."""
        try:
            if not self._caught_up:
                result = self.catch_up()
                self._caught_up = True
                return result
            return self.publish()
        except (duckdb.Error, OSError) as exc:
            log.warning("replica %s: publish failed, will retry after the next batch: %s",
                        lake_dir(self.db), str(exc).splitlines()[0])
            return None

    def publish(self) -> Optional[PublishResult]:
        """One DuckLake transaction with all batches after the last published one."""
        started = time.perf_counter()
        con = self.con
        last = int(con.execute(f"SELECT coalesce(max(batch_id), 0) FROM {self.source}.pipeline_batches").fetchone()[0])
        con.execute("BEGIN TRANSACTION")
        try:
            published = int(con.execute(f"SELECT published_batch_id FROM {LAKE_ALIAS}.{STATE_TABLE}").fetchone()[0])
            if last <= published:
                con.execute("ROLLBACK")
                return None
            window = f"batch_id > {published} AND batch_id <= {last}"
            touched = (f"SELECT customer_id FROM {self.source}.events WHERE {window} "
                       f"UNION SELECT customer_id FROM {self.source}.journeys WHERE {window}")
            customers = int(con.execute(f"SELECT count(*) FROM ({touched})").fetchone()[0])
            for table in APPENDED:
                con.execute(f"INSERT INTO {LAKE_ALIAS}.{table} SELECT * FROM {self.source}.{table} WHERE {window}")
            for table in REPLACED:
                con.execute(f"DELETE FROM {LAKE_ALIAS}.{table}")
                con.execute(f"INSERT INTO {LAKE_ALIAS}.{table} SELECT * FROM {self.source}.{table}")
            if customers:
                for table in PER_CUSTOMER:
                    con.execute(f"DELETE FROM {LAKE_ALIAS}.{table} WHERE customer_id IN ({touched})")
                    con.execute(
                        f"INSERT INTO {LAKE_ALIAS}.{table} SELECT * FROM {self.source}.{table} WHERE customer_id IN ({touched})"
                    )
            self._record(published + 1, last, customers, time.perf_counter() - started, rebuilt=False)
            con.execute("COMMIT")
        except BaseException:
            _rollback(con)
            raise
        return self._done(published + 1, last, customers, started, rebuilt=False)

    def _rebuild(self, reason: str) -> PublishResult:
        """Replaces every replica table and view with the database's, in one transaction."""
        started = time.perf_counter()
        con = self.con
        last = int(con.execute(f"SELECT coalesce(max(batch_id), 0) FROM {self.source}.pipeline_batches").fetchone()[0])
        log.info("replica %s: full rebuild (%s)", lake_dir(self.db), reason)
        con.execute("BEGIN TRANSACTION")
        try:
            existing = {
                (r[0], r[1]) for r in con.execute(
                    f"SELECT table_name, table_type FROM information_schema.tables WHERE table_catalog = {sql_literal(LAKE_ALIAS)}"
                ).fetchall()
            }
            for name, kind in sorted(existing, key=lambda e: e[1] != "VIEW"):  # views first
                con.execute(f"DROP {'VIEW' if kind == 'VIEW' else 'TABLE'} IF EXISTS {LAKE_ALIAS}.{ident(name)}")
            for table in TABLES:
                con.execute(f"CREATE TABLE {LAKE_ALIAS}.{table} AS SELECT * FROM {self.source}.{table}")
            con.execute(
                f"""CREATE TABLE {LAKE_ALIAS}.{STATE_TABLE} (
                        published_batch_id BIGINT, published_batch_started_at TIMESTAMPTZ,
                        published_at TIMESTAMPTZ, fingerprint VARCHAR)"""
            )
            con.execute(
                f"""CREATE TABLE {LAKE_ALIAS}.{LOG_TABLE} (
                        first_batch_id BIGINT, last_batch_id BIGINT, customers BIGINT,
                        publish_s DOUBLE, rebuilt BOOLEAN, published_at TIMESTAMPTZ)"""
            )
            con.execute(f"INSERT INTO {LAKE_ALIAS}.{STATE_TABLE} VALUES (0, NULL, now(), {sql_literal(self._fingerprint())})")
            con.execute(f"USE {LAKE_ALIAS}")
            try:
                for view in view_files():
                    con.execute(view.read_text())
            finally:
                con.execute(f"USE {self.source}")
            customers = int(con.execute(f"SELECT count(DISTINCT customer_id) FROM {self.source}.journeys").fetchone()[0])
            self._record(1 if last else 0, last, customers, time.perf_counter() - started, rebuilt=True)
            con.execute("COMMIT")
        except BaseException:
            _rollback(con)
            raise
        return self._done(1 if last else 0, last, customers, started, rebuilt=True)

    def _record(self, first: int, last: int, customers: int, seconds: float, rebuilt: bool) -> None:
        # literals, not parameters: binding Python values makes DuckDB import pandas (~1 s)
        self.con.execute(
            f"""UPDATE {LAKE_ALIAS}.{STATE_TABLE} SET published_batch_id = {int(last)}, published_at = now(),
                   published_batch_started_at = (SELECT started_at FROM {self.source}.pipeline_batches
                                                 WHERE batch_id = {int(last)})"""
        )
        self.con.execute(
            f"""INSERT INTO {LAKE_ALIAS}.{LOG_TABLE} VALUES
                ({int(first)}, {int(last)}, {int(customers)}, {float(seconds)!r}, {str(bool(rebuilt)).upper()}, now())"""
        )

    def _done(self, first: int, last: int, customers: int, started: float, rebuilt: bool) -> PublishResult:
        seconds = time.perf_counter() - started
        self.publish_seconds.append(seconds)
        log.debug("replica: published batches %d-%d (%d customers) in %.3fs", first, last, customers, seconds)
        self._since_compact += max(1, last - first + 1)
        if self.compact_every and self._since_compact >= self.compact_every:
            self.compact()
        return PublishResult(first, last, customers, seconds, rebuilt)

    # ------------------------------------------------------------------ maintenance

    def compact(self) -> float:
        """Merges small files, applies deletes, and drops snapshots/files older than RETENTION."""
        started = time.perf_counter()
        self._since_compact = 0
        older = f"now() - INTERVAL '{RETENTION}'"
        for statement in (
            f"CALL ducklake_flush_inlined_data('{LAKE_ALIAS}')",
            f"CALL ducklake_merge_adjacent_files('{LAKE_ALIAS}')",
            f"CALL ducklake_rewrite_data_files('{LAKE_ALIAS}')",
            f"CALL ducklake_expire_snapshots('{LAKE_ALIAS}', older_than => {older})",
            f"CALL ducklake_cleanup_old_files('{LAKE_ALIAS}', older_than => {older})",
        ):
            try:
                self.con.execute(statement).fetchall()
            except duckdb.Error as exc:  # maintenance must never stop the pipeline
                log.warning("replica maintenance step failed (%s): %s", statement.split("(")[0], str(exc).splitlines()[0])
        seconds = time.perf_counter() - started
        log.debug("replica: maintenance in %.3fs", seconds)
        return seconds


def _rollback(con: duckdb.DuckDBPyConnection) -> None:
    try:
        con.execute("ROLLBACK")
    except duckdb.Error:
        pass
