"""The streaming job's store: a DuckLake that the job's workers write and readers query.

Why DuckLake: readers attach it read-only and see whole transactions only (snapshot isolation),
without blocking writers, and its catalog can be SQLite (one file, no server: the local default)
or PostgreSQL (many concurrent writers). This module only needs the catalog part of an attach
string (`sqlite:/path/catalog.sqlite`, later `postgres:dbname=... host=...`) and a data path.

Idempotence, which the exactly-once argument rests on (docs/streaming.md): every write replaces
state keyed by what it is about, never appends blindly.
* Per customer, ONE transaction replaces that customer's events, journeys, journey_events,
  journey_metrics and journey_handoffs. Before replacing, the incoming winners are merged with
  the events already landed (same conflicting-copies rule as the pipeline: transforms.dedup); if
  the merged set differs from the set the update was computed from (an older update arriving
  after a newer one, a record later than its customer's state, a copy that moved an event to
  another customer), the customer is recomputed from the merged set with the pure functions.
  So the stored rows are always the journeys of the union of everything landed.
* Losing copies and dead letters are keyed by their Kafka coordinates (topic, partition, offset):
  delete-then-insert, so a replayed record is stored once. Every record read is in exactly one of
  events, event_copies, dead_letters: `sent = events + event_copies + dead_letters`.

Concurrency: a SQLite catalog takes one writer at a time, so writers serialize on an advisory file
lock next to the catalog and retry transaction conflicts with backoff; a PostgreSQL catalog lets
DuckLake detect conflicts itself and the retry loop handles them the same way.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

import duckdb
import pyarrow as pa

from pipelines.storage.quoting import ident, sql_literal
from pipelines.storage.replica import load_extensions
from transforms.batch_files import (
    DEAD_LETTER_SCHEMA,
    EVENT_SCHEMA,
    HANDOFF_SCHEMA,
    JOURNEY_METRICS_SCHEMA,
    JOURNEY_SCHEMA,
    LINK_SCHEMA,
)
from transforms.customer_stream import assemble_update, coordinates, merge_copies
from transforms.metrics_config import MetricsConfig

log = logging.getLogger("cxj.stream.store")

ALIAS = "stream_lake"
INLINE_ROWS = 1000
Row = dict[str, Any]

COPY_SCHEMA = pa.schema([
    ("event_id", pa.string()), ("customer_id", pa.string()), ("content_hash", pa.string()),
    ("topic", pa.string()), ("partition", pa.int32()), ("offset", pa.int64()), ("kafka_ts_ms", pa.int64()),
])

# table -> (staging schema, derived columns added on insert)
TABLES: dict[str, pa.Schema] = {
    "events": EVENT_SCHEMA,
    "event_copies": COPY_SCHEMA,
    "dead_letters": DEAD_LETTER_SCHEMA,
    "journeys": JOURNEY_SCHEMA,
    "journey_events": LINK_SCHEMA,
    "journey_metrics": JOURNEY_METRICS_SCHEMA,
    "journey_handoffs": HANDOFF_SCHEMA,
}
PER_CUSTOMER = ("journeys", "journey_events", "journey_metrics", "journey_handoffs")


class StoreUnavailable(RuntimeError):
    """The store could not be attached or written within the retry budget."""


def _column(name: str, table: str) -> str:
    """Staged column -> stored expression: epoch-µs columns also become TIMESTAMPTZ columns."""
    quoted = ident(name)
    if name.endswith("_us") and not (table == "events" and name == "at_us"):
        target = "occurred_at" if name == "at_us" else name[:-3]
        return f"(make_timestamp({quoted}) AT TIME ZONE 'UTC') AS {ident(target)}"
    return quoted


def select_list(table: str) -> str:
    columns = [_column(f.name, table) for f in TABLES[table]]
    if table == "events":
        columns.append("(make_timestamp(at_us) AT TIME ZONE 'UTC') AS occurred_at")
    if table == "journeys":
        columns.insert(6, "now() AS updated_at")
    columns.append("now() AS landed_at")
    return ", ".join(columns)


def attach_statement(catalog: str, data_path: str, read_only: bool = False) -> str:
    """ATTACH for a DuckLake catalog (`sqlite:/path`, `postgres:...`, or a bare SQLite path)."""
    if not catalog.startswith(("sqlite:", "postgres:", "duckdb:")):
        catalog = "sqlite:" + str(Path(catalog).resolve())
    options = [f"DATA_PATH {sql_literal(data_path.rstrip('/') + '/')}"]
    # small transactions (one per batch of customer updates) keep their rows in the catalog until
    # they add up, instead of writing a few-row Parquet file per table per transaction
    options.append("READ_ONLY" if read_only else f"DATA_INLINING_ROW_LIMIT {INLINE_ROWS}")
    return f"ATTACH {sql_literal('ducklake:' + catalog)} AS {ALIAS} ({', '.join(options)})"


def lock_file_for(catalog: str) -> Optional[Path]:
    """A SQLite catalog serializes writers on `<catalog>.writer.lock`; other catalogs need none."""
    if catalog.startswith("postgres:"):
        return None
    path = catalog[len("sqlite:"):] if catalog.startswith("sqlite:") else catalog
    return Path(path).resolve().with_name(Path(path).name + ".writer.lock")


def _retryable(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(word in text for word in ("conflict", "locked", "busy", "could not commit", "retry"))


@dataclass
class LandResult:
    customers: int = 0
    repaired: int = 0  # customers recomputed by the store (merged set differed from the update's)
    events: int = 0
    copies: int = 0
    dead_letters: int = 0
    attempts: int = 1
    seconds: float = 0.0
    journeys: int = 0


@dataclass
class LakeStore:
    catalog: str
    data_path: str
    repeat_window_s: float
    config: MetricsConfig = field(default_factory=MetricsConfig)
    retry_budget_s: float = 120.0

    def __post_init__(self) -> None:
        self.con: Optional[duckdb.DuckDBPyConnection] = None
        self.lock_path = lock_file_for(self.catalog)

    # ------------------------------------------------------------------ connection

    def open(self) -> "LakeStore":
        Path(self.data_path).mkdir(parents=True, exist_ok=True)
        if self.lock_path is not None:
            self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        self._with_retries(self._open_once)
        return self

    def _prepare_sqlite_catalog(self) -> None:
        """A new SQLite catalog starts in WAL mode, so readers never block a writer's commit (in the
        default rollback-journal mode a reader's open snapshot stalled commits for minutes).
        A separate process on purpose: two SQLite libraries in one process break each other's locks."""
        if self.lock_path is None:
            return
        path = Path(self.catalog[len("sqlite:"):] if self.catalog.startswith("sqlite:") else self.catalog)
        if path.exists():
            return
        subprocess.run([sys.executable, "-c", "import sqlite3, sys; sqlite3.connect(sys.argv[1]).execute('PRAGMA journal_mode=WAL').fetchall()",  # noqa: E501
                        str(path)], check=True, capture_output=True, timeout=60)

    def _open_once(self) -> None:
        con = duckdb.connect()
        try:
            con.execute("SET TimeZone = 'UTC'")
            con.execute("SET enable_progress_bar = false")  # DuckDB would draw it on stdout (see Store)
            load_extensions(con, postgres=self.catalog.startswith("postgres:"))
            with self._writer_lock():
                self._prepare_sqlite_catalog()
                con.execute(attach_statement(self.catalog, self.data_path))
                for table in TABLES:
                    empty = pa.Table.from_pylist([], schema=TABLES[table])
                    con.register("empty_rows", empty)
                    con.execute(f"CREATE TABLE IF NOT EXISTS {ALIAS}.{table} AS SELECT {select_list(table)} FROM empty_rows LIMIT 0")
                    con.unregister("empty_rows")
        except BaseException:
            con.close()
            raise
        self.con = con

    def close(self) -> None:
        if self.con is not None:
            self.con.close()
            self.con = None

    def __enter__(self) -> "LakeStore":
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _writer_lock(self) -> Iterator[None]:
        if self.lock_path is None:
            yield
            return
        with open(self.lock_path, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _with_retries(self, action: Any) -> Any:
        deadline = time.monotonic() + self.retry_budget_s
        attempt = 0
        while True:
            attempt += 1
            try:
                return action()
            except duckdb.Error as exc:
                if not _retryable(exc) or time.monotonic() > deadline:
                    raise StoreUnavailable(f"store {self.catalog}: {str(exc).splitlines()[0]}") from None
                pause = min(2.0, 0.05 * 2 ** min(attempt, 6)) * (0.5 + random.random())
                log.debug("store busy (%s), retry %d in %.2fs", str(exc).splitlines()[0], attempt, pause)
                time.sleep(pause)

    # ------------------------------------------------------------------ landing

    def land(self, updates: Iterable[Row], dead_letters: Iterable[Row]) -> LandResult:
        """Lands customer updates and dead letters in one transaction (retried as a whole)."""
        updates = list(updates)
        # the same record twice in one batch (a replay) is one dead letter, as it is across batches
        dead_letters = list({coordinates(d): d for d in dead_letters}.values())
        if not updates and not dead_letters:
            return LandResult(attempts=0)
        started = time.perf_counter()
        attempts = 0

        def once() -> LandResult:
            nonlocal attempts
            attempts += 1
            with self._writer_lock():
                return self._land_once(updates, dead_letters)

        result = self._with_retries(once)
        result.attempts = attempts
        result.seconds = time.perf_counter() - started
        return result

    def _stored_events(self, where: str, values: list[str]) -> list[Row]:
        assert self.con is not None
        if not values:
            return []
        columns = ", ".join(ident(f.name) for f in EVENT_SCHEMA)
        self.con.register("wanted_keys", pa.table({"k": pa.array(values, pa.string())}))
        try:
            return self.con.execute(
                f"SELECT {columns} FROM {ALIAS}.events WHERE {where} IN (SELECT k FROM wanted_keys)"
            ).fetch_arrow_table().to_pylist()
        finally:
            self.con.unregister("wanted_keys")

    def _land_once(self, updates: list[Row], dead_letters: list[Row]) -> LandResult:
        con = self.con
        assert con is not None, "open() the store first"
        result = LandResult()
        con.execute("BEGIN TRANSACTION")
        try:
            # 1. incoming winners and copies, merged per event_id with the stored winners
            incoming: dict[str, Row] = {}
            copies: dict[tuple[str, int, int], Row] = {}
            computed: dict[str, Row] = {}  # customer -> the update whose rows we may reuse
            for update in updates:
                for row in update["winners"]:
                    merge_copies(incoming, copies, row)
                for row in update["copies"]:
                    copies.setdefault(coordinates(row), row)
                if update.get("journeys") is not None:
                    computed[update["customer_id"]] = update  # a later update of the same customer wins
            customers = {u["customer_id"] for u in updates if u["winners"]}
            stored = self._stored_events("customer_id", sorted(customers)) + \
                self._stored_events("event_id", sorted(incoming))
            merged: dict[str, Row] = {}
            merged_copies: dict[tuple[str, int, int], Row] = {}
            for row in {coordinates(r): r for r in stored}.values():
                merge_copies(merged, merged_copies, row)
            before = {event_id: row["customer_id"] for event_id, row in merged.items()}
            for row in incoming.values():
                merge_copies(merged, merged_copies, row)
            copies.update(merged_copies)
            # customers whose events changed owner (a winning copy with another customer_id)
            moved_from = {before[e] for e, row in merged.items() if e in before and before[e] != row["customer_id"]}
            affected = customers | moved_from
            extra = sorted(moved_from - customers)
            for row in self._stored_events("customer_id", extra):
                if row["event_id"] not in merged:
                    merged[row["event_id"]] = row
            # 2. per affected customer: reuse the update's rows when it saw exactly this set
            by_customer: dict[str, list[Row]] = {c: [] for c in affected}
            for row in merged.values():
                if row["customer_id"] in by_customer:
                    by_customer[row["customer_id"]].append(row)
            results: list[Row] = []
            for customer_id, winners in sorted(by_customer.items()):
                update = computed.get(customer_id)
                signature = {(r["event_id"], r["content_hash"]) for r in winners}
                if update is not None and signature == {(r["event_id"], r["content_hash"]) for r in update["winners"]}:
                    results.append(update)
                else:
                    result.repaired += 1
                    results.append(assemble_update(customer_id, winners, [], self.repeat_window_s, self.config))
            # 3. replace
            winners_rows = [r for u in results for r in u["winners"]]
            if affected:
                self._replace_events(sorted(affected), winners_rows)
            self._replace_by_coordinates("event_copies", list(copies.values()))
            self._replace_by_coordinates("dead_letters", dead_letters)
            for table, key in (("journeys", "journeys"), ("journey_events", "links"),
                               ("journey_metrics", "metrics"), ("journey_handoffs", "handoffs")):
                if affected:
                    self._replace_customers(table, sorted(affected), [r for u in results for r in u[key]])
            con.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(duckdb.Error):
                con.execute("ROLLBACK")
            raise
        result.customers = len(affected)
        result.events = len(winners_rows)
        result.copies = len(copies)
        result.dead_letters = len(dead_letters)
        result.journeys = sum(len(u["journeys"]) for u in results)
        return result

    def _stage(self, name: str, rows: list[Row], schema: pa.Schema) -> None:
        assert self.con is not None
        self.con.register(name, pa.Table.from_pylist([{f.name: r.get(f.name) for f in schema} for r in rows], schema=schema))

    def _replace_events(self, customers: list[str], winners: list[Row]) -> None:
        con = self.con
        assert con is not None
        self._stage("staged_customers", [{"customer_id": c} for c in customers], pa.schema([("customer_id", pa.string())]))
        self._stage("staged_events", winners, EVENT_SCHEMA)
        con.execute(f"""DELETE FROM {ALIAS}.events WHERE customer_id IN (SELECT customer_id FROM staged_customers)
                        OR event_id IN (SELECT event_id FROM staged_events)""")
        con.execute(f"INSERT INTO {ALIAS}.events SELECT {select_list('events')} FROM staged_events")

    def _replace_by_coordinates(self, table: str, rows: list[Row]) -> None:
        """Delete-then-insert by Kafka coordinates: a replayed record is stored once.

        A record stored as a losing copy never becomes a winner later: every merge starts from
        the stored winners of the same event_ids, and a winner only ever gives way to a smaller copy."""
        con = self.con
        assert con is not None
        if not rows:
            return
        self._stage("staged_rows", rows, TABLES[table])
        key = "topic || ':' || \"partition\" || ':' || \"offset\""
        con.execute(f"DELETE FROM {ALIAS}.{table} WHERE {key} IN (SELECT {key} FROM staged_rows)")
        con.execute(f"INSERT INTO {ALIAS}.{table} SELECT {select_list(table)} FROM staged_rows")

    def _replace_customers(self, table: str, customers: list[str], rows: list[Row]) -> None:
        con = self.con
        assert con is not None
        self._stage("staged_rows", rows, TABLES[table])
        con.execute(f"DELETE FROM {ALIAS}.{table} WHERE customer_id IN (SELECT customer_id FROM staged_customers)")
        if rows:
            con.execute(f"INSERT INTO {ALIAS}.{table} SELECT {select_list(table)} FROM staged_rows")

    # ------------------------------------------------------------------ reading

    def counts(self) -> dict[str, int]:
        assert self.con is not None
        return {t: int(self.con.execute(f"SELECT count(*) FROM {ALIAS}.{t}").fetchone()[0]) for t in TABLES}

    def resume_offsets(self) -> dict[tuple[str, int], int]:
        """Per partition, the first offset not accounted for (no gap before it): where a new job
        resumes with `--start-from store`. Offsets in a gap were never landed and are read again."""
        assert self.con is not None
        key_union = " UNION ALL ".join(f'SELECT topic, "partition", "offset" FROM {ALIAS}.{t}'
                                       for t in ("events", "event_copies", "dead_letters"))
        # events keep the winner's coordinates only: a replaced winner's record is in event_copies
        rows = self.con.execute(f"""
            WITH seen AS (SELECT DISTINCT topic, "partition", "offset" FROM ({key_union})),
                 ranked AS (SELECT *, "offset" - row_number() OVER (PARTITION BY topic, "partition" ORDER BY "offset") AS grp,
                                   min("offset") OVER (PARTITION BY topic, "partition") AS first FROM seen)
            SELECT topic, "partition", first, max("offset") + 1 FROM ranked
            WHERE grp = first - 1 GROUP BY topic, "partition", first""").fetchall()
        return {(topic, int(partition)): int(next_offset) for topic, partition, first, next_offset in rows if int(first) == 0}
