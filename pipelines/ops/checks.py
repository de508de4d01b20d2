"""Data-quality gate over the landed tables, with great-expectations.

The expectations restate the journey invariants of docs/metrics.md as checks on data, so a
bug, a bad migration or a hand edit that breaks them is caught where analysts would
otherwise find it. Cross-column rules are computed in SQL as boolean columns and expected
to be all true, which keeps each failure message specific.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import duckdb

log = logging.getLogger("cxj.check")

# journeys read with derived rule columns (true = the row keeps the rule)
JOURNEYS_QUERY = """
SELECT journey_id, status, time_to_resolution_s, handoff_count, team_handoff_count, csat, nps,
       started_at, resolved_at,
       (time_to_resolution_s IS NULL) = (status <> 'resolved')                AS ttr_null_iff_not_resolved,
       (resolved_at IS NULL) = (status <> 'resolved')                         AS resolved_at_null_iff_not_resolved,
       channel_hops < touchpoint_count OR (channel_hops = 0 AND touchpoint_count = 0) AS hops_below_touchpoints,
       NOT fcr OR (status = 'resolved' AND contact_count = 1 AND reopen_count = 0)    AS fcr_only_one_touch,
       team_handoff_count <= handoff_count                                     AS team_handoffs_within_handoffs
FROM journeys
"""
EVENTS_QUERY = "SELECT event_id FROM events"
LINKS_QUERY = "SELECT event_id, journey_id IN (SELECT journey_id FROM journeys) AS journey_exists FROM journey_events"

# service metrics (journey_metrics, journey_handoffs) against the journeys they belong to
SERVICE_QUERY = """
SELECT coalesce(m.journey_id, j.journey_id) AS journey_id,
       m.journey_id IS NOT NULL AND j.journey_id IS NOT NULL AS one_row_per_journey,
       coalesce(coalesce(h.n, 0) = j.handoff_count AND coalesce(h.t, 0) = j.team_handoff_count, false)
           AS handoffs_listed,
       coalesce(m.bot_to_human_handoffs + m.human_to_bot_handoffs + m.bot_to_bot_handoffs
                + m.team_to_team_handoffs + m.agent_to_agent_handoffs = j.handoff_count, false) AS kinds_add_up,
       coalesce(m.first_resolved_at IS NULL OR j.resolved_at IS NULL OR m.first_resolved_at <= j.resolved_at, false)
           AS first_resolution_before_full,
       coalesce(m.time_to_resolution_business_s IS NULL
                OR m.time_to_resolution_business_s <= j.time_to_resolution_s + 1e-6, false) AS business_within_calendar,
       coalesce(m.durable_check_at IS NULL OR (m.durably_resolved IS NULL AND j.status = 'resolved'), false)
           AS durable_pending_consistent
FROM journey_metrics m
FULL JOIN journeys j ON j.journey_id = m.journey_id
LEFT JOIN (SELECT journey_id, count(*) AS n, count(*) FILTER (WHERE team_changed) AS t
           FROM journey_handoffs GROUP BY journey_id) h ON h.journey_id = coalesce(m.journey_id, j.journey_id)
-- journeys last written before the service metrics existed get them when their customer is next touched
WHERE m.journey_id IS NOT NULL OR j.batch_id >= (SELECT min(batch_id) FROM journey_metrics)
"""
SERVICE_RULES = ("one_row_per_journey", "handoffs_listed", "kinds_add_up", "first_resolution_before_full",
                 "business_within_calendar", "durable_pending_consistent")

RULE_COLUMNS = (
    "ttr_null_iff_not_resolved",
    "resolved_at_null_iff_not_resolved",
    "hops_below_touchpoints",
    "fcr_only_one_touch",
    "team_handoffs_within_handoffs",
)


@dataclass
class CheckResult:
    table: str
    expectation: str
    column: str
    success: bool
    unexpected_count: int
    examples: list[Any] = field(default_factory=list)


@dataclass
class QualityReport:
    checked_at: datetime
    results: list[CheckResult]

    @property
    def success(self) -> bool:
        return all(r.success for r in self.results)

    @property
    def failed(self) -> list[CheckResult]:
        return [r for r in self.results if not r.success]

    def render(self) -> str:
        lines = [f"{'PASS' if self.success else 'FAIL'}  {len(self.results) - len(self.failed)}/{len(self.results)} expectations met"]
        width = max(len(f"{r.table}.{r.column}") for r in self.results)
        for r in self.results:
            mark = "ok  " if r.success else "FAIL"
            detail = "" if r.success else f"  {r.unexpected_count} rows, e.g. {r.examples[:3]}"
            lines.append(f"  {mark} {f'{r.table}.{r.column}':<{width}}  {r.expectation}{detail}")
        return "\n".join(lines)


def _suites(gx: Any, gxe: Any) -> dict[str, list[Any]]:
    journeys = [
        gxe.ExpectColumnValuesToNotBeNull(column="journey_id"),
        gxe.ExpectColumnValuesToBeUnique(column="journey_id"),
        gxe.ExpectColumnValuesToBeBetween(column="time_to_resolution_s", min_value=0),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="resolved_at", column_B="started_at", or_equal=True, ignore_row_if="either_value_is_missing"
        ),
        gxe.ExpectColumnValuesToBeBetween(column="handoff_count", min_value=0),
        gxe.ExpectColumnValuesToBeBetween(column="csat", min_value=1, max_value=5),
        gxe.ExpectColumnValuesToBeBetween(column="nps", min_value=0, max_value=10),
        gxe.ExpectColumnValuesToBeInSet(column="status", value_set=["open", "resolved", "unresolved"]),
    ]
    journeys += [gxe.ExpectColumnValuesToBeInSet(column=c, value_set=[True]) for c in RULE_COLUMNS]
    events = [gxe.ExpectColumnValuesToNotBeNull(column="event_id"), gxe.ExpectColumnValuesToBeUnique(column="event_id")]
    links = [
        gxe.ExpectColumnValuesToBeUnique(column="event_id"),
        gxe.ExpectColumnValuesToBeInSet(column="journey_exists", value_set=[True]),
    ]
    service = [gxe.ExpectColumnValuesToBeInSet(column=c, value_set=[True]) for c in SERVICE_RULES]
    return {"journeys": journeys, "events": events, "journey_events": links, "journey_metrics": service}


def run_suite(con: duckdb.DuckDBPyConnection) -> QualityReport:
    """Validates the tables visible on ``con`` (read-only is enough)."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    import great_expectations.expectations as gxe
    from great_expectations.data_context.types.base import ProgressBarsConfig

    # its module logger is pinned at INFO and says "Created temporary directory ..." on every run
    logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.WARNING)

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_pandas("cxj")
    frames = {
        "journeys": con.execute(JOURNEYS_QUERY).df(),
        "events": con.execute(EVENTS_QUERY).df(),
        "journey_events": con.execute(LINKS_QUERY).df(),
        "journey_metrics": con.execute(SERVICE_QUERY).df(),
    }
    results: list[CheckResult] = []
    for table, expectations in _suites(gx, gxe).items():
        suite = context.suites.add(gx.ExpectationSuite(name=f"cxj_{table}"))
        for expectation in expectations:
            suite.add_expectation(expectation)
        batch = source.add_dataframe_asset(table).add_batch_definition_whole_dataframe("all").get_batch(
            batch_parameters={"dataframe": frames[table]}
        )
        validation = batch.validate(suite)
        for r in validation.results:
            kwargs = r.expectation_config.kwargs
            column = kwargs.get("column") or f"{kwargs.get('column_A')}>={kwargs.get('column_B')}"
            results.append(CheckResult(
                table=table,
                expectation=r.expectation_config.type,
                column=str(column),
                success=bool(r.success),
                unexpected_count=int(r.result.get("unexpected_count") or 0),
                examples=[str(v) for v in (r.result.get("partial_unexpected_list") or [])[:5]],
            ))
    results += _map_results(con)
    return QualityReport(datetime.now(timezone.utc), results)


def _map_results(con: duckdb.DuckDBPyConnection) -> list[CheckResult]:
    """The map from customers to the row blocks of their events leads to every event
    (pipelines/storage/event_blocks.py): checked where the connection has the map, that is on
    the database itself (`cxj run --check`, or `cxj check` on a database without a replica)."""
    from pipelines.storage.event_blocks import events_off_the_map
    from pipelines.storage.store import ROW_BLOCK

    found = events_off_the_map(con, ROW_BLOCK)
    if found is None:
        return []
    missing, customers = found
    return [CheckResult(table="customer_event_blocks", expectation="map_leads_to_every_event",
                        column="customer_digest,block", success=missing == 0, unexpected_count=missing,
                        examples=customers)]


QUALITY_TABLE_DDL = """
CREATE TABLE IF NOT EXISTS quality_checks (
    checked_at       TIMESTAMPTZ NOT NULL,
    batch_id         BIGINT,            -- last landed batch when checked
    success          BOOLEAN NOT NULL,  -- all expectations met
    failed           INTEGER NOT NULL,
    total            INTEGER NOT NULL,
    results          JSON NOT NULL      -- [{table, expectation, column, success, unexpected_count, examples}]
)
"""


def store_report(con: duckdb.DuckDBPyConnection, report: QualityReport) -> None:
    con.execute(QUALITY_TABLE_DDL)
    batch = con.execute("SELECT max(batch_id) FROM pipeline_batches").fetchone()[0]
    con.execute(
        "INSERT INTO quality_checks VALUES (?, ?, ?, ?, ?, ?)",
        [report.checked_at, batch, report.success, len(report.failed), len(report.results),
         json.dumps([r.__dict__ for r in report.results])],
    )


class QualityGateFailed(RuntimeError):
    """The suite failed after a batch; the run stops so bad data is not built upon."""

    def __init__(self, report: QualityReport) -> None:
        failed = ", ".join(f"{r.table}.{r.column} ({r.unexpected_count})" for r in report.failed)
        super().__init__(f"data-quality check failed: {failed}")
        self.report = report


def quality_listener(store: Any) -> Any:
    """A RunListener running the suite after every landed batch (`cxj run --check`)."""
    from pipelines.local.microbatch import RunListener

    class QualityListener(RunListener):
        def batch_landed(self, batch: Any, positions: Any) -> None:
            report = run_suite(store.con)
            store_report(store.con, report)
            if report.success:
                log.info("batch %d: data-quality check passed (%d expectations)", batch.batch_id, len(report.results))
                return
            log.error("batch %d: data-quality check failed:\n%s", batch.batch_id, report.render())
            raise QualityGateFailed(report)

    return QualityListener()
