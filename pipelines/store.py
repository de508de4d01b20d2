"""The DuckDB store: the only module that writes the journey tables.

Everything a batch produces lands in one transaction together with the Kafka offsets it
read, so a crash at any point followed by a restart gives exactly the tables of an
uninterrupted run (DESIGN decision 3). Keeping all writes here means the storage choice
can change without touching the pipeline.
"""
from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Optional

import duckdb

from pipelines.replica import open_writer_replica
from pipelines.source_log import PARTITION_REMOVED, Fingerprint, SourceChange

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"


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
_PID = re.compile(r"\(PID (\d+)\)")


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


def sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _ts(column: str) -> str:
    """Epoch microseconds -> TIMESTAMPTZ, independent of the session time zone."""
    return f"(make_timestamp({column}) AT TIME ZONE 'UTC')"


def _ms_ts(column: str) -> str:
    return f"(make_timestamp({column} * 1000) AT TIME ZONE 'UTC')"


def _parquet(staging: Path, kind: str) -> str:
    """Reads a staged kind; the driver guarantees at least one (possibly empty) file per kind."""
    files = sorted(staging.glob(f"{kind}*.parquet"))
    if not files:
        raise FileNotFoundError(f"no staged {kind} files in {staging}")
    return "read_parquet([" + ", ".join(sql_literal(str(f)) for f in files) + "])"


@dataclass
class BatchFacts:
    """What the driver knows about a batch before landing it."""

    batch_id: int
    started_at: datetime
    ranges: list[dict[str, Any]]  # {topic, partition, from, to}
    consumed: int
    duplicates_in_batch: int
    ingest_s: float
    assemble_s: float = 0.0


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


class Store:
    """A writer connection to the journeys database."""

    def __init__(self, path: Path | str, read_only: bool = False,
                 lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S) -> None:
        self.path = Path(path)
        self.con = open_with_lock_retry(self.path, read_only, lock_timeout_s)
        # The file we opened: DuckDB keeps writing to it through its descriptor even after it was
        # deleted or replaced, so every landing first checks the path still names this file.
        self.identity = _file_identity(self.path) if self.path.name != ":memory:" else None
        self.con.execute("SET TimeZone = 'UTC'")
        # fingerprints of the records at the ends of the planned ranges, keyed by
        # (topic, partition, end of range); landed with the offsets (see _advance_offsets)
        self.pending_fingerprints: dict[tuple[str, int, int], Fingerprint] = {}
        self.replica = None  # DuckLake read replica, published after every landed batch (pipelines/replica.py)
        if not read_only:
            try:
                self.apply_schema()
            except StoreError:  # a broken model file (pipelines/models.py): already one line
                _close_quietly(self.con)
                raise
            except (duckdb.Error, OSError) as exc:  # e.g. a full disk: the views are written at every start
                _close_quietly(self.con)
                raise StoreError(f"cannot prepare the tables and views in {self.path}: {str(exc).splitlines()[0]}") from None
            self.replica = open_writer_replica(self.con, self.path)

    def close(self) -> None:
        if self.replica is not None:
            self.replica.close()
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
        comments from their YAML docs (pipelines/models.py), in one transaction."""
        from pipelines.models import ModelError, catalog_statements

        try:
            statements = catalog_statements()
        except ModelError as exc:  # a broken model or YAML file: one line naming it, nothing applied
            raise StoreError(f"cannot create the views from sql/models: {exc}") from None
        self.con.execute((SQL_DIR / "schema.sql").read_text())
        self.con.execute("BEGIN TRANSACTION")
        try:
            for statement in statements:
                self.con.execute(statement)
            self.con.execute("COMMIT")
        except BaseException:
            try:
                self.con.execute("ROLLBACK")
            except duckdb.Error:  # the failed statement (e.g. disk full) already ended the transaction
                pass
            raise  # the original cause, not the rollback's

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
        if table not in {"events", "journeys", "journey_events", "dead_letters", "pipeline_batches"}:
            raise ValueError(f"unknown table {table!r}")
        return int(self.con.execute(f"SELECT count(*) FROM {table}").fetchone()[0])

    # ---------------------------------------------------------------- batch steps

    def select_new_events(self, staging: Path) -> tuple[int, int]:
        """Keeps staged events not landed before; returns (staged, new)."""
        source = _parquet(staging, "events")
        self.con.execute("DROP TABLE IF EXISTS batch_events")
        self.con.execute(
            f"CREATE TEMP TABLE batch_events AS SELECT s.* FROM {source} s "
            "ANTI JOIN events e ON e.event_id = s.event_id"
        )
        staged = int(self.con.execute(f"SELECT count(*) FROM {source}").fetchone()[0])
        new = int(self.con.execute("SELECT count(*) FROM batch_events").fetchone()[0])
        return staged, new

    def export_history(self, target: Path, partitions: int = 8) -> int:
        """Writes all events of the customers the batch touched (old and new) for assembly,
        partitioned by a hash of customer_id so each customer's events share one file."""
        customers = int(self.con.execute("SELECT count(DISTINCT customer_id) FROM batch_events").fetchone()[0])
        if customers == 0:
            return 0
        columns = (
            "event_id, event_type, customer_id, ticket_id, chat_id, survey_id, channel, handler_type, "
            "agent_id, team, status, author, outcome, csat, nps"
        )
        query = f"""
            SELECT {columns}, at_us FROM batch_events
            UNION ALL
            SELECT {columns}, epoch_us(occurred_at) AS at_us FROM events
            WHERE customer_id IN (SELECT DISTINCT customer_id FROM batch_events)
        """
        partitioned = f"SELECT *, hash(customer_id) % {int(partitions)} AS part FROM ({query})"
        self.con.execute(
            f"COPY ({partitioned}) TO {sql_literal(str(target))} (FORMAT parquet, PARTITION_BY (part), OVERWRITE_OR_IGNORE)"
        )
        return customers

    def land(self, facts: BatchFacts, staging: Path, duplicates_landed_before: int) -> LandedBatch:
        """One transaction: events, dead letters, journeys of touched customers, offsets, batch row."""
        land_started = datetime.now(timezone.utc)
        dead_source = _parquet(staging, "dead")
        journey_source = _parquet(staging, "journeys")
        link_source = _parquet(staging, "links")
        con = self.con
        self.verify_file()
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute(
                f"""INSERT INTO events SELECT event_id, event_type, {_ts('at_us')}, occurred_at_text,
                    customer_id, ticket_id, chat_id, survey_id, channel, handler_type, agent_id, team,
                    status, author, outcome, csat, nps, payload, topic, "partition", "offset",
                    {_ms_ts('kafka_ts_ms')}, ?, now() FROM batch_events""",
                [facts.batch_id],
            )
            landed = int(con.execute("SELECT count(*) FROM batch_events").fetchone()[0])
            con.execute(
                    f"""INSERT INTO dead_letters SELECT topic, "partition", "offset", {_ms_ts('kafka_ts_ms')},
                        raw, reason, detail, ?, now() FROM {dead_source}""",
                [facts.batch_id],
            )
            dead = int(con.execute(f"SELECT count(*) FROM {dead_source}").fetchone()[0])
            touched = "SELECT DISTINCT customer_id FROM batch_events"
            before = self._journey_snapshot(touched)  # for journey_revisions
            con.execute(f"DELETE FROM journeys WHERE customer_id IN ({touched})")
            con.execute(f"DELETE FROM journey_events WHERE customer_id IN ({touched})")
            con.execute(
                    f"""INSERT INTO journeys SELECT journey_id, customer_id, status, {_ts('started_at_us')},
                        {_ts('resolved_at_us')}, {_ts('last_event_at_us')}, now(), time_to_resolution_s,
                        first_response_s, handoff_count, team_handoff_count, channel_hops, touchpoint_count,
                        contact_count, reopen_count, csat, nps, fcr, channels, agents, teams, threads,
                        event_count, ? FROM {journey_source}""",
                [facts.batch_id],
            )
            journeys = int(con.execute(f"SELECT count(*) FROM {journey_source}").fetchone()[0])
            con.execute(f"INSERT INTO journey_events SELECT event_id, journey_id, customer_id FROM {link_source}")
            self._land_service_metrics(facts.batch_id, staging, touched, before)
            self._advance_offsets(facts)
            customers = int(con.execute(f"SELECT count(*) FROM ({touched})").fetchone()[0])
            duplicates = facts.duplicates_in_batch + duplicates_landed_before
            finished = datetime.now(timezone.utc)
            land_s = (finished - land_started).total_seconds()
            duration = (finished - facts.started_at).total_seconds()
            con.execute(
                """INSERT INTO pipeline_batches
                   SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,
                          (SELECT min(occurred_at) FROM events WHERE batch_id = ?),
                          (SELECT max(occurred_at) FROM events WHERE batch_id = ?),
                          (SELECT min(kafka_timestamp) FROM events WHERE batch_id = ?),
                          (SELECT max(kafka_timestamp) FROM events WHERE batch_id = ?),
                          ?""",
                [
                    facts.batch_id, facts.started_at, finished, duration, facts.ingest_s, facts.assemble_s,
                    land_s, facts.consumed, landed, duplicates, dead, customers, journeys,
                    facts.batch_id, facts.batch_id, facts.batch_id, facts.batch_id,
                    json.dumps(facts.ranges),
                ],
            )
            con.execute("COMMIT")
        except STORAGE_FAILURES as exc:
            _rollback_quietly(con)
            raise StoreError(f"landing batch {facts.batch_id} into {self.path} failed, nothing of it was kept "
                             f"(offsets unchanged): {str(exc).splitlines()[0]}") from exc
        except BaseException:
            _rollback_quietly(con)
            raise
        self.verify_file(facts.batch_id)  # deleted between the check above and the commit
        if self.replica is not None:
            self.replica.after_land()  # publish to readers; never fails the batch (retried next time)
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

    def _journey_snapshot(self, customers: str, with_event_ids: bool = True) -> list[dict[str, Any]]:
        """The landed journeys (+ service metrics, + event ids) of ``customers`` (a subquery)."""
        snapshot = rows(
            self.con,
            f"""SELECT j.* EXCLUDE (updated_at, batch_id), m.* EXCLUDE (journey_id, customer_id, batch_id),
                       m.journey_id IS NOT NULL AS _has_metrics
                FROM journeys j LEFT JOIN journey_metrics m ON m.journey_id = j.journey_id
                WHERE j.customer_id IN ({customers}) ORDER BY j.journey_id""",
        )
        metric_columns = [d[0] for d in self.con.execute("SELECT * EXCLUDE (journey_id, customer_id, batch_id) "
                                                         "FROM journey_metrics LIMIT 0").description]
        for row in snapshot:  # landed before the service metrics existed: compare the journey only
            if not row.pop("_has_metrics"):
                for name in metric_columns:
                    row.pop(name, None)
        if not with_event_ids:  # only the rows before the batch need them (to name successors)
            return snapshot
        links: dict[str, list[str]] = {}
        for event_id, journey_id in self.con.execute(
            f"SELECT event_id, journey_id FROM journey_events WHERE customer_id IN ({customers})"
        ).fetchall():
            links.setdefault(journey_id, []).append(event_id)
        for row in snapshot:
            row["event_ids"] = sorted(links.get(row["journey_id"], []))
        return snapshot

    def _land_service_metrics(self, batch_id: int, staging: Path, customers: str, before: list[dict[str, Any]]) -> None:
        """journey_metrics and journey_handoffs of the touched customers, and journey_revisions:
        how this batch changed their landed journeys (docs/metrics.md, "Revisions"). Runs inside
        the landing transaction, after the new journeys and links are in."""
        from transforms.revisions import revisions

        con = self.con
        con.execute(f"DELETE FROM journey_metrics WHERE customer_id IN ({customers})")
        con.execute(f"DELETE FROM journey_handoffs WHERE customer_id IN ({customers})")
        if any(staging.glob("jmetrics*.parquet")):
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
                    team_pingpong_immediate, team_pingpong_returns, ? FROM {_parquet(staging, 'jmetrics')}""",
                [batch_id],
            )
        if any(staging.glob("handoffs*.parquet")):
            con.execute(
                f"""INSERT INTO journey_handoffs SELECT journey_id, customer_id, seq, {_ts('at_us')}, event_id,
                    thread, kind, from_agent, from_team, from_is_bot, to_agent, to_team, to_is_bot,
                    team_changed, agent_changed, escalation, after_first_reply, ? FROM {_parquet(staging, 'handoffs')}""",
                [batch_id],
            )
        if not before:
            return
        after = self._journey_snapshot(customers, with_event_ids=False)
        new_links = dict(con.execute(
            f"SELECT event_id, journey_id FROM journey_events WHERE customer_id IN ({customers})").fetchall())
        batch_events = con.execute("SELECT event_id, customer_id, occurred_at FROM events WHERE batch_id = ?",
                                   [batch_id]).fetchall()
        found = revisions(before, after, new_links, batch_events)
        if not found:
            return
        import pyarrow as pa

        text, texts = pa.string(), pa.list_(pa.string())
        schema = pa.schema([("journey_id", text), ("customer_id", text), ("change", text), ("replaced_by", texts),
                            ("reason", text), ("trigger_event_ids", texts), ("trigger_events", pa.int32()),
                            ("late_events", pa.int32()), ("changed_columns", texts), ("before", text), ("after", text)])
        table = pa.Table.from_pylist(found, schema=schema)
        con.register("revisions_found", table)
        try:
            con.execute(
                """INSERT INTO journey_revisions SELECT ?, now(), journey_id, customer_id, change, replaced_by,
                   reason, trigger_event_ids, trigger_events, late_events, changed_columns,
                   before::JSON, after::JSON FROM revisions_found""",
                [batch_id],
            )
        finally:
            con.unregister("revisions_found")

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


def rows(con: duckdb.DuckDBPyConnection, query: str, params: Iterable[Any] = ()) -> list[dict[str, Any]]:
    cursor = con.execute(query, list(params))
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]
