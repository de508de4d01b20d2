"""Read access for analysts, ops commands and notebooks — also while the pipeline runs.

    from pipelines import connect

    from pipelines import query
    df = query("SELECT * FROM mart_daily_kpis ORDER BY day DESC")   # a polars DataFrame
    con = connect("data/journeys.duckdb")                             # a read-only connection
    con.sql("FROM mart_open_backlog ORDER BY bucket_order").show()

Both expose the same names: the landing tables (events, journeys, journey_events,
dead_letters, pipeline_offsets, pipeline_batches) and the views of sql/models/ (staging, core,
marts). Readers never change anything and never keep the pipeline from starting:

* They read the DuckLake read replica the writer publishes after every batch (``<db>.lake/``,
  pipelines/storage/replica.py), attached READ_ONLY, whether or not the pipeline runs. Every statement
  sees the latest published batch, whole. They never open the ``--db`` file while a replica
  exists, so they never hold the lock the writer needs.
* No replica yet (a database landed with CXJ_REPLICA=0, or an old one): one-shot readers
  (`query()`, `cxj sql "..."`, `cxj status`, `cxj check`) open the database file read-only
  for that one read and close it at once; a pipeline starting meanwhile waits for it
  (`cxj run --lock-timeout`). Long-lived readers (`connect()`, the `cxj sql` prompt) refuse
  with one line instead, because a connection kept open on the file would stop the pipeline.
* Every connection is locked down by pipelines/storage/reader_safety.py: only queries run, no file
  outside the replica is read unless the user opts in (``--allow-read DIR`` /
  CXJ_SQL_ALLOW_READ), and its safety settings cannot be changed (docs/security.md).
"""
from __future__ import annotations

import fcntl
import os
import struct
import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import duckdb

from pipelines.config.paths import DEFAULT_DB
from pipelines.storage.quoting import sql_literal
from pipelines.storage.reader_safety import CONNECT_CONFIG, ReaderConnection, allowed_read_dirs, harden
from pipelines.storage.replica import LAKE_ALIAS, STATE_TABLE, ReplicaError, attach_sql, catalog_path, data_path, lake_dir, load_extensions
from pipelines.storage.store import StoreError, main_tables

if TYPE_CHECKING:
    import polars

    from pipelines.storage.lake_target import LakeTarget


class ReplicaNotReady(StoreError):
    """There is no read replica to read (yet)."""


def lock_holder(path: Path) -> Optional[int]:
    """PID of a process holding a lock on the DuckDB file ``path`` (None: free or unknown).

    Asks the kernel (fcntl F_GETLK) without taking a lock, so asking never gets in a writer's
    way. Only safe in a process that does not itself have the file open in DuckDB (closing any
    descriptor of a file drops the process's POSIX locks on it) — i.e. in readers.
    """
    layout = "hhqqi4x"  # struct flock on Linux x86-64/arm64
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        answer = fcntl.fcntl(fd, fcntl.F_GETLK, struct.pack(layout, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0))
        kind, _whence, _start, _length, pid = struct.unpack(layout, answer)
    except (OSError, struct.error):
        return None
    finally:
        os.close(fd)
    return None if kind == fcntl.F_UNLCK else pid


def _is_lock_error(exc: duckdb.Error) -> bool:
    text = str(exc).lower()
    return "lock" in text and ("conflicting" in text or "could not set" in text)


def open_reader(db: Path | str = DEFAULT_DB, wait_s: float = 10.0, *, one_shot: bool = False,
                allow_read: Sequence[Path | str] = (), outputs: Sequence[Path] = (),
                lake: "Optional[str | LakeTarget]" = None) -> tuple[ReaderConnection, str]:
    """(connection, source): source is 'replica', 'lake' (a shared lake), or 'database' for a
    one-shot read of a database without a replica. See the module docstring for which is
    chosen and why.

    ``allow_read``: extra directories the reader may read files from (plus CXJ_SQL_ALLOW_READ).
    ``outputs``: files the calling command writes itself (``cxj sql --output``).
    ``lake``: a shared lake (``--lake`` spec or target; default CXJ_LAKE) instead of ``db``'s replica.
    """
    path = Path(db)
    target = _lake_target(lake)
    read_dirs = allowed_read_dirs(allow_read)
    deadline = time.monotonic() + wait_s
    while target is not None:
        try:
            return connect_shared_lake(target, read_dirs, outputs), "lake"
        except ReplicaNotReady:
            if time.monotonic() >= deadline:
                raise
        time.sleep(0.2)
    for output in outputs:
        if _protected(path, Path(output)):
            raise StoreError(f"refusing to write a result to {output}: readers never overwrite the database or its replica")
    while True:
        if catalog_path(path).exists():
            try:
                return connect_replica(path, read_dirs, outputs), "replica"
            except ReplicaNotReady:
                if time.monotonic() >= deadline:
                    raise
        elif not path.exists():
            raise StoreError(f"{path} does not exist yet: run `cxj run --once` (or `cxj demo`) first")
        else:
            holder = lock_holder(path)
            if holder is None and not one_shot:
                raise ReplicaNotReady(
                    f"{path} has no read replica yet ({catalog_path(path)}); readers that stay open never open the "
                    "database file itself (it would stop the pipeline from starting): run `cxj run --once` to publish "
                    "the replica, or use a one-shot read (query(), `cxj sql \"...\"`)"
                )
            if holder is None:
                try:
                    return _open_database(path, read_dirs, outputs), "database"
                except duckdb.Error as exc:
                    if not _is_lock_error(exc):
                        raise StoreError(f"cannot open {path} read-only: {str(exc).splitlines()[0]}") from None
            if time.monotonic() >= deadline:  # a writer holds the file and has not published yet
                raise ReplicaNotReady(
                    f"{path} is in use by the pipeline (PID {holder or '?'}) and its read replica {catalog_path(path)} "
                    "does not exist yet (the pipeline creates it when it starts; is it an older version, or run "
                    "with CXJ_REPLICA=0?)"
                )
        time.sleep(0.2)


def _protected(db: Path, target: Path) -> bool:
    """True for the database file, its WAL, and anything inside its replica folder."""
    db, target = db.resolve(), target.resolve()
    lake = lake_dir(db).resolve()
    return target in (db, db.with_name(db.name + ".wal")) or target == lake or lake in target.parents


def _open_database(path: Path, read_dirs: Sequence[Path], outputs: Sequence[Path]) -> ReaderConnection:
    """The database file itself, read-only and locked down, for one read (no replica yet)."""
    con = duckdb.connect(str(path), read_only=True, config=dict(CONNECT_CONFIG))
    try:
        con.execute("SET TimeZone = 'UTC'")
        missing = _missing_store_tables(con)
        harden(con, read_dirs, outputs)
    except duckdb.Error:
        con.close()
        raise
    if missing:
        con.close()
        raise StoreError(
            f"{path} is not a CX Journeys store: it has no {_either(missing)} table (a DuckDB file written by "
            "something else, or one whose first `cxj run` stopped before it made them): pass the store's file with "
            "--db, or run `cxj run --once` to make the tables")
    return ReaderConnection(con, "database", outputs, protected=lambda target: _protected(path, target))


# The tables every store has had since its first version: a file without them is not a store, and
# every reader would stop on a catalog error of its own (status, report, check, sql).
STORE_TABLES = ("events", "journeys", "pipeline_offsets")


def _missing_store_tables(con: duckdb.DuckDBPyConnection) -> list[str]:
    present = main_tables(con)
    return [name for name in STORE_TABLES if name not in present]


def _either(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def connect(db: Path | str = DEFAULT_DB, wait_s: float = 10.0, allow_read: Sequence[Path | str] = (),
            lake: "Optional[str | LakeTarget]" = None) -> ReaderConnection:
    """A read-only connection to the journey tables and marts of ``db``, on the read replica
    (or on the shared lake ``lake`` / CXJ_LAKE: every writer's rows, the same names).

    Waits up to ``wait_s`` seconds for a just-started pipeline to publish the replica; keeping
    it open never stops the pipeline. Close it when done (or use it as a context manager).
    """
    return open_reader(db, wait_s, allow_read=allow_read, lake=lake)[0]


def _lake_target(lake: "Optional[str | LakeTarget]") -> "Optional[LakeTarget]":
    from pipelines.storage.lake_target import LakeSpecError, LakeTarget, lake_from_env

    if isinstance(lake, LakeTarget):
        return lake
    try:
        return lake_from_env(lake)
    except LakeSpecError as exc:
        raise StoreError(str(exc)) from None


_NO_SECRETS: Optional[str] = None


def _no_secrets_dir() -> str:
    global _NO_SECRETS
    if _NO_SECRETS is None or not os.path.isdir(_NO_SECRETS):
        import atexit
        import shutil
        import tempfile

        _NO_SECRETS = tempfile.mkdtemp(prefix="cxj-no-secrets-")
        atexit.register(shutil.rmtree, _NO_SECRETS, True)
    return _NO_SECRETS


def connect_shared_lake(target: "LakeTarget", read_dirs: Sequence[Path] = (), outputs: Sequence[Path] = ()) -> ReaderConnection:
    """A locked-down read-only connection to a shared lake (PostgreSQL catalog, shared_lake.py).

    Every statement sees one committed snapshot of the catalog, i.e. whole publishes of every
    writer; reading takes no lock any writer waits for (PostgreSQL MVCC)."""
    # The postgres extension looks up secrets while attaching, which fails outright when
    # persistent secrets are off; an empty private folder gives it none to find (a reader
    # cannot create any: CREATE SECRET is refused like every non-query statement).
    con = duckdb.connect(config={**CONNECT_CONFIG, "allow_persistent_secrets": True, "secret_directory": _no_secrets_dir()})
    try:
        con.execute("SET TimeZone = 'UTC'")
        load_extensions(con, postgres=True)
        con.execute(f"ATTACH {sql_literal(target.attach_target)} AS {LAKE_ALIAS} (READ_ONLY)")
        con.execute(f"USE {LAKE_ALIAS}")
        row = con.execute(
            f"SELECT value FROM ducklake_options({sql_literal(LAKE_ALIAS)}) WHERE option_name = 'data_path'").fetchone()
        data = Path(str(row[0])) if row and row[0] else None
        # DuckLake reads its Parquet files through DuckDB's file system: allow that folder only
        harden(con, [*([data] if data else []), *read_dirs], outputs)
        con.execute(f"SELECT published_batch_id FROM {STATE_TABLE}").fetchall()
    except duckdb.CatalogException:
        con.close()
        raise ReplicaNotReady(f"the {target.describe()} has no published batch yet (no writer has started)") from None
    except (duckdb.Error, ReplicaError) as exc:
        con.close()
        if "creating a new ducklake is explicitly disabled" in str(exc).lower():  # no writer has created it yet
            raise ReplicaNotReady(f"the {target.describe()} does not exist yet (the first writer creates it)") from None
        raise StoreError(f"cannot open the {target.describe()}: {str(exc).splitlines()[0]}") from None
    return ReaderConnection(con, "lake", outputs,
                            protected=lambda target_path: data is not None and (Path(target_path).resolve() == data.resolve()
                                                                                or data.resolve() in Path(target_path).resolve().parents))


def connect_replica(db: Path | str = DEFAULT_DB, read_dirs: Sequence[Path] = (),
                    outputs: Sequence[Path] = ()) -> ReaderConnection:
    """A locked-down read-only connection to the DuckLake replica of ``db``."""
    catalog = catalog_path(db)
    if not catalog.exists():
        raise ReplicaNotReady(
            f"the read replica {catalog} of {db} does not exist yet (the pipeline creates it when it starts; "
            "is it an older version, or run with CXJ_REPLICA=0?)"
        )
    con = duckdb.connect(config=dict(CONNECT_CONFIG))
    try:
        con.execute("SET TimeZone = 'UTC'")
        load_extensions(con)
        con.execute(attach_sql(db, read_only=True))
        con.execute(f"USE {LAKE_ALIAS}")
        # DuckLake reads its Parquet files through DuckDB's file system: allow that folder only
        harden(con, [data_path(db), *read_dirs], outputs)
        con.execute(f"SELECT published_batch_id FROM {STATE_TABLE}").fetchall()
    except duckdb.CatalogException:
        con.close()
        raise ReplicaNotReady(f"the read replica {catalog} is being created; try again in a moment") from None
    except (duckdb.Error, ReplicaError) as exc:
        con.close()
        if "creating a new ducklake is explicitly disabled" in str(exc).lower():  # catalog file, no lake yet
            raise ReplicaNotReady(f"the read replica {catalog} is being created; try again in a moment") from None
        raise StoreError(f"cannot open the read replica {catalog}: {str(exc).splitlines()[0]}") from None
    return ReaderConnection(con, "replica", outputs, protected=lambda target: _protected(Path(db), target))


def published_batch(con: ReaderConnection | duckdb.DuckDBPyConnection) -> Optional[int]:
    """The batch a replica connection currently shows (None on a database-file connection)."""
    try:
        return int(con.execute(f"SELECT published_batch_id FROM {STATE_TABLE}").fetchone()[0])
    except duckdb.CatalogException:
        return None


def query(sql: str, db: Path | str = DEFAULT_DB, allow_read: Sequence[Path | str] = (),
          lake: "Optional[str | LakeTarget]" = None) -> "polars.DataFrame":
    """Runs one query and returns a polars DataFrame; the connection is closed right away."""
    con, _source = open_reader(db, one_shot=True, allow_read=allow_read, lake=lake)
    try:
        relation = con.sql(sql)
        if relation is None:
            raise ValueError("the statement returns no rows (use connect() for statements without results)")
        return relation.pl()
    finally:
        con.close()


def replica_disagreement(con: ReaderConnection, db: Path | str, attempts: int = 4) -> Optional[str]:
    """Why the replica ``con`` reads does not show what the database landed; None if it does.

    Compared with the database itself when no process holds it (a read-only look of a few
    milliseconds; a pipeline starting meanwhile waits for it), else with the summary the writer
    recorded at its last verified publish (``<db>.lake/published.json``). A publish landing
    between the two reads is re-read, not reported.
    """
    from pipelines.storage.replica import read_sidecar, read_summary, summary_differences

    path = Path(db)
    differences: list[str] = []
    for attempt in range(attempts):
        con.execute("BEGIN TRANSACTION")  # one snapshot of the replica for all the figures
        try:
            replica = read_summary(con)
        finally:
            con.execute("COMMIT")
        if path.is_file() and lock_holder(path) is None:
            try:
                database_con = _open_database(path, (), ())
            except duckdb.Error:
                database = None  # a writer got there first: use what it recorded
            else:
                try:
                    database = read_summary(database_con)
                finally:
                    database_con.close()
            against = "the database"
        else:
            database = None
        if database is None:
            database = read_sidecar(path)
            against = "the database as of the last publish"
            if database is None:
                return None  # a writer that records no summary (older version): nothing to compare
        differences = summary_differences(replica, database)
        if not differences:
            return None
        if attempt + 1 < attempts:
            time.sleep(0.3)
    return (f"the read replica {lake_dir(path)} disagrees with {against}: {'; '.join(differences)} "
            "(readers see wrong data; the pipeline rebuilds it at its next start or batch)")
