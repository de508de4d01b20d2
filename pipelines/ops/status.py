"""The ops view of a pipeline: offsets, lag, freshness, recent failures, and a verdict.

Read from the landed tables (through pipelines.storage.reader, so it also works while the pipeline
holds the database) and from the broker's end offsets. Exit levels follow the Nagios/cron
convention so any alerting tool can use `cxj status` directly.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

OK, WARN, CRIT = 0, 1, 2
LEVEL_NAMES = {OK: "OK", WARN: "WARN", CRIT: "CRIT"}
SOURCE_RESET_WINDOW_H = 24  # a change of the broker's log keeps status at WARN this long
DEFAULT_MAX_DEAD_LETTER_RATE = 0.1  # a tenth of the input rejected is an upstream contract break, not noise
DEAD_LETTER_WINDOW_S = 3600.0
DEAD_LETTER_FALLBACK_BATCHES = 10  # when no batch landed in the window: the last ones, so an idle pipeline still shows it


@dataclass
class PartitionStatus:
    topic: str
    partition: int
    landed_offset: int
    end_offset: Optional[int]
    lag: Optional[int]
    # ok | gone (landed from, but no longer on the broker) | unknown (broker unreachable) |
    # recreated / retention (the log changed since it was landed; the pipeline has not run since)
    state: str = "ok"


@dataclass
class StatusReport:
    checked_at: str
    db: str
    source: str  # 'database' or 'replica' (the pipeline is running)
    partitions: list[PartitionStatus] = field(default_factory=list)
    total_lag: Optional[int] = None
    newest_occurred_at: Optional[str] = None
    event_freshness_s: Optional[float] = None
    last_batch_at: Optional[str] = None
    processing_freshness_s: Optional[float] = None
    staleness_s: float = 0.0  # how long landed data has been behind the broker (0 when caught up)
    last_batch: Optional[dict[str, Any]] = None
    dead_letters_last_hour: dict[str, int] = field(default_factory=dict)
    source_resets: list[dict[str, Any]] = field(default_factory=list)  # last SOURCE_RESET_WINDOW_H hours
    dead_letter_rate: Optional[float] = None  # dead letters / records consumed over the recent batches
    dead_letter_basis: Optional[str] = None  # which batches the rate covers
    recent_consumed: int = 0
    recent_dead_letters: int = 0
    broker_error: Optional[str] = None
    replica_problem: Optional[str] = None  # the read replica does not match the database (WARN)
    level: int = OK
    reasons: list[str] = field(default_factory=list)

    @property
    def level_name(self) -> str:
        return LEVEL_NAMES[self.level]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["level_name"] = self.level_name
        return data


def _iso(value: Optional[datetime]) -> Optional[str]:
    return value.astimezone(timezone.utc).isoformat() if value is not None else None


def read_tables(db: Path, now: datetime, lake: Optional[str] = None
                ) -> tuple[StatusReport, dict[tuple[str, int], int], dict[tuple[str, int], Any]]:
    """Everything status needs from the database, in one read-only connection: the report so
    far, the landed offsets and the fingerprints of the last landed records. ``lake``: a
    shared lake (--lake / CXJ_LAKE) instead of ``db``: every writer's offsets and batches."""
    from pipelines.storage.reader import open_reader

    con, source = open_reader(db, one_shot=True, lake=lake)
    try:
        report = StatusReport(checked_at=_iso(now) or "", db=str(db), source=source)
        landed = {(t, p): o for t, p, o in con.execute('SELECT topic, "partition", next_offset FROM pipeline_offsets').fetchall()}
        newest = con.execute("SELECT max(occurred_at) FROM events").fetchone()[0]
        last = con.execute(
            """SELECT batch_id, finished_at, duration_s, consumed, landed, duplicates, dead_letters
               FROM pipeline_batches ORDER BY finished_at DESC, batch_id DESC LIMIT 1"""
        ).fetchone()
        dead = con.execute(
            """SELECT reason, count(*) FROM dead_letters WHERE landed_at >= ? - INTERVAL 1 HOUR
               GROUP BY reason ORDER BY count(*) DESC""",
            [now],
        ).fetchall()
        resets = _recent_source_resets(con, now)
        fingerprints = _fingerprints(con)
        if source == "replica":
            from pipelines.storage.reader import replica_disagreement

            report.replica_problem = replica_disagreement(con, db)
        elif source == "lake":
            report.replica_problem = shared_lake_problem(con)
        recent = con.execute(
            """SELECT count(*), coalesce(sum(consumed), 0), coalesce(sum(dead_letters), 0) FROM pipeline_batches
               WHERE finished_at >= ? - to_seconds(?)""",
            [now, DEAD_LETTER_WINDOW_S],
        ).fetchone()
        basis = "batches of the last hour"
        if recent[0] == 0:
            recent = con.execute(
                """SELECT count(*), coalesce(sum(consumed), 0), coalesce(sum(dead_letters), 0) FROM
                   (SELECT consumed, dead_letters FROM pipeline_batches ORDER BY batch_id DESC LIMIT ?)""",
                [DEAD_LETTER_FALLBACK_BATCHES],
            ).fetchone()
            basis = f"last {recent[0]} batches (none in the last hour)"
    finally:
        con.close()
    report.source_resets = resets
    report.newest_occurred_at = _iso(newest)
    report.event_freshness_s = (now - newest).total_seconds() if newest is not None else None
    if last is not None:
        batch_id, finished, duration, consumed, landed_n, duplicates, dead_n = last
        report.last_batch_at = _iso(finished)
        report.processing_freshness_s = (now - finished).total_seconds()
        report.last_batch = {
            "batch_id": batch_id, "finished_at": _iso(finished), "duration_s": round(duration, 3),
            "consumed": consumed, "landed": landed_n, "duplicates": duplicates, "dead_letters": dead_n,
        }
    report.dead_letters_last_hour = {reason: n for reason, n in dead}
    batches, report.recent_consumed, report.recent_dead_letters = (int(v) for v in recent)
    if report.recent_consumed > 0:
        report.dead_letter_rate = report.recent_dead_letters / report.recent_consumed
        report.dead_letter_basis = basis
    return report, landed, fingerprints


def shared_lake_problem(con: Any) -> Optional[str]:
    """Customers or events that two writers of a shared lake landed (their journeys are wrong)."""
    from pipelines.storage.shared_lake import conflicts_summary

    found = conflicts_summary(con)
    if not found or not (found[0] or found[1]):
        return None
    customers, events, writers = found
    return (f"{customers} customers landed by two writers ({events} event ids), writers {', '.join(writers)}: "
            "their journeys are split and wrong; see lake_conflicts (docs/storage.md \"Shared lake\")")


def _fingerprints(con: Any) -> dict:  # type: ignore[type-arg]
    """The stored fingerprints of the last landed records (none in an older database)."""
    import duckdb

    from pipelines.kafka.source_log import Fingerprint

    try:
        rows = con.execute('SELECT topic, "partition", record_offset, kafka_timestamp_ms, digest FROM source_fingerprints').fetchall()
    except duckdb.CatalogException:
        return {}
    return {(t, p): Fingerprint(o, ts, d) for t, p, o, ts, d in rows}


def _recent_source_resets(con: Any, now: datetime) -> list[dict[str, Any]]:
    """source_resets rows of the last SOURCE_RESET_WINDOW_H hours (none in an older database)."""
    import duckdb

    try:
        cursor = con.execute(
            f"""SELECT topic, "partition", kind, from_offset, to_offset, records, detail, detected_at, batch_id
                FROM source_resets WHERE detected_at >= ? - INTERVAL {SOURCE_RESET_WINDOW_H} HOUR
                ORDER BY detected_at, topic, 2""",
            [now],
        )
    except duckdb.CatalogException:
        return []
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row), detected_at=_iso(row[7])) for row in cursor.fetchall()]


def describe_reset(reset: dict[str, Any]) -> str:
    """One line per change of the broker's log, as status shows it."""
    where = f"{reset['topic']}[{reset['partition']}]"
    when = reset["detected_at"]
    if reset["kind"] == "retention":
        return (f"{where}: {reset['records']} records lost to retention (offsets {reset['from_offset']}.."
                f"{reset['to_offset'] - 1}), detected {when}")
    if reset["kind"] == "partition_removed":
        lost = "an unknown number of" if reset["records"] is None else str(reset["records"])
        return (f"{where}: partition removed from the broker, {lost} records after offset {reset['from_offset']} never landed, "
                f"detected {when}")
    return (f"{where}: topic recreated on the broker ({reset['detail']}); re-read from offset {reset['to_offset']} "
            f"instead of {reset['from_offset']}, detected {when}")


def add_broker_positions(report: StatusReport, landed: dict[tuple[str, int], int], settings: Any, topics: list[str],
                         fingerprints: Optional[dict[tuple[str, int], Any]] = None) -> None:
    """Fills per-partition end offsets, lag and state; on failure records why instead."""
    from pipelines.kafka.offsets import BrokerUnavailable, OffsetReader
    from pipelines.kafka.source_log import offsets_to_verify, source_changes

    fingerprints = fingerprints or {}
    # Only the configured topics are this pipeline's source: offsets landed from a topic it no
    # longer reads (renamed topics, a database reused for other topics) are history, not a
    # partition that vanished from the broker.
    configured = set(topics)
    landed = {key: offset for key, offset in landed.items() if key[0] in configured}
    try:
        reader = OffsetReader(settings, connect_timeout_s=5.0)
        try:
            partitions, missing = reader.partitions(topics)
            beginnings, ends = reader.bounds(partitions)
            # the same check the pipeline makes before every batch, read-only: a log that changed
            # while the pipeline was stopped must not look caught up here
            wanted = offsets_to_verify(landed, fingerprints, partitions, beginnings, ends)
            observed = reader.records_at(wanted, ends) if wanted else {}
            changes = {c.key: c for c in source_changes(landed, fingerprints, partitions, missing, beginnings, ends, observed)}
        finally:
            reader.close()
    except BrokerUnavailable as exc:
        report.broker_error = str(exc)
        report.partitions = [PartitionStatus(t, p, o, None, None, "unknown") for (t, p), o in sorted(landed.items())]
        return
    keys = sorted(set(ends) | set(landed))
    report.partitions = []
    for key in keys:
        change = changes.get(key)
        resume = change.to_offset if change is not None and change.to_offset is not None else landed.get(key, 0)
        state = "gone" if key not in ends else (change.kind if change is not None else "ok")
        report.partitions.append(PartitionStatus(key[0], key[1], landed.get(key, 0), ends.get(key),
                                                 max(0, ends[key] - resume) if key in ends else None, state))
        if change is not None and key in ends:
            report.reasons.append(f"changed since the last landed batch: {change.message()}")
    report.total_lag = sum(ps.lag or 0 for ps in report.partitions)
    if missing:
        report.reasons.append(f"topics missing on the broker: {', '.join(missing)}")


def evaluate(report: StatusReport, max_lag: Optional[int], max_staleness_s: Optional[float],
             max_dead_letter_rate: Optional[float] = DEFAULT_MAX_DEAD_LETTER_RATE) -> None:
    """Sets level and reasons: CRIT past a threshold, WARN past half of one."""
    level = OK
    gone = [p for p in report.partitions if p.state == "gone"]
    if gone:
        level = WARN
        report.reasons.append("partitions landed from but no longer on the broker: " + ", ".join(
            f"{p.topic}[{p.partition}] (landed up to offset {p.landed_offset})" for p in gone))
    if any(p.state not in ("ok", "gone", "unknown") for p in report.partitions):
        level = WARN
    for reset in report.source_resets:
        level = WARN
        report.reasons.append(describe_reset(reset))
    if report.broker_error:
        level = CRIT
        report.reasons.append(f"broker unreachable: {report.broker_error}")
    if report.replica_problem:
        level = max(level, WARN)
        report.reasons.append(report.replica_problem)
    if report.total_lag and report.processing_freshness_s is not None:
        report.staleness_s = report.processing_freshness_s
    elif report.total_lag and report.last_batch is None:
        report.staleness_s = float("inf")
    checks = [("lag", report.total_lag, max_lag, "messages"), ("staleness", report.staleness_s, max_staleness_s, "s")]
    for name, value, limit, unit in checks:
        if limit is None or value is None:
            continue
        if value > limit:
            level = max(level, CRIT)
            report.reasons.append(f"{name} {value:.0f} {unit} > {limit:.0f}")
        elif value > limit / 2:
            level = max(level, WARN)
            report.reasons.append(f"{name} {value:.0f} {unit} > half of {limit:.0f}")
    rate = report.dead_letter_rate
    if max_dead_letter_rate is not None and max_dead_letter_rate < 1 and rate is not None:  # 1 = off
        share = (f"dead-letter rate {rate:.1%} ({report.recent_dead_letters} of {report.recent_consumed} records, "
                 f"{report.dead_letter_basis})")
        if rate > max_dead_letter_rate:
            level = max(level, CRIT)
            report.reasons.append(f"{share} > {max_dead_letter_rate:.1%}")
        elif rate > max_dead_letter_rate / 2:
            level = max(level, WARN)
            report.reasons.append(f"{share} > half of {max_dead_letter_rate:.1%}")
    report.level = level


def collect(db: Path, settings: Any, topics: list[str], max_lag: Optional[int], max_staleness_s: Optional[float],
            now: Optional[datetime] = None, max_dead_letter_rate: Optional[float] = DEFAULT_MAX_DEAD_LETTER_RATE,
            lake: Optional[str] = None) -> StatusReport:
    now = now or datetime.now(timezone.utc)
    report, landed, fingerprints = read_tables(db, now, lake)
    add_broker_positions(report, landed, settings, topics, fingerprints)
    evaluate(report, max_lag, max_staleness_s, max_dead_letter_rate)
    return report


def _age(seconds: Optional[float]) -> str:
    if seconds is None:
        return "n/a"
    if seconds == float("inf"):
        return "never"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if abs(seconds) >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.1f} s"


def render(report: StatusReport) -> str:
    lines = [f"{report.level_name}  {report.db} (read from the {report.source})"]
    for reason in report.reasons:
        lines.append(f"  - {reason}")
    lines.append("")
    header = ("topic", "partition", "landed offset", "end offset", "lag", "state")
    rows = [(p.topic, str(p.partition), str(p.landed_offset), "?" if p.end_offset is None else str(p.end_offset),
             "?" if p.lag is None else str(p.lag), p.state) for p in report.partitions]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    lines.extend("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)
    lines.append(f"total lag: {'?' if report.total_lag is None else report.total_lag} messages")
    lines.append("")
    lines.append(f"event-time freshness:  {_age(report.event_freshness_s)} (newest occurred_at {report.newest_occurred_at or 'n/a'})")
    lines.append(f"processing freshness:  {_age(report.processing_freshness_s)} (last batch {report.last_batch_at or 'never'})")
    if report.last_batch:
        b = report.last_batch
        lines.append(
            f"last batch #{b['batch_id']}: {b['consumed']} records ({b['landed']} landed, {b['duplicates']} duplicates, "
            f"{b['dead_letters']} dead letters) in {b['duration_s']:.2f} s"
        )
    dead = ", ".join(f"{r} {n}" for r, n in report.dead_letters_last_hour.items()) or "none"
    lines.append(f"dead letters in the last hour: {dead}")
    if report.dead_letter_rate is not None:
        lines.append(f"dead-letter rate: {report.dead_letter_rate:.1%} of {report.recent_consumed} records "
                     f"({report.dead_letter_basis})")
    return "\n".join(lines)
