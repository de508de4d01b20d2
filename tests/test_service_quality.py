"""The data-quality suite covers the service metrics: a clean landing passes; each way of
breaking journey_metrics / journey_handoffs against the journeys is caught by name."""
from __future__ import annotations

import json
import shutil

import duckdb
import pytest

from tests.support import new_topics, run_once, send_events
from tests.test_service_metrics_golden import CONFIG, SERVICE


@pytest.fixture(scope="module")
def landed(broker, tmp_path_factory):
    topics = new_topics(broker)
    db = tmp_path_factory.mktemp("svcq") / "q.duckdb"
    docs = [json.loads(line) | {"customer_id": f"{s.name[:2]}/c1", "event_id": f"{s.name[:2]}/{json.loads(line)['event_id']}"}
            for s in SERVICE if s.name[:2] in ("63", "67", "75", "79") for line in s.lines]
    send_events(broker, topics, docs)
    run_once(db, broker, topics, service_metrics=CONFIG)
    return db


def report_for(db):
    from pipelines.ops.checks import run_suite

    with duckdb.connect(str(db), read_only=True) as con:
        return run_suite(con)


def test_clean_landing_passes(landed):
    report = report_for(landed)
    assert report.success, report.render()
    assert {r.column for r in report.results if r.table == "journey_metrics"} == {
        "one_row_per_journey", "handoffs_listed", "kinds_add_up", "first_resolution_before_full",
        "business_within_calendar", "durable_pending_consistent"}


@pytest.mark.parametrize("statement, failing", [
    ("DELETE FROM journey_metrics WHERE customer_id = '63/c1'", "one_row_per_journey"),
    ("INSERT INTO journey_metrics SELECT * REPLACE ('j_orphan' AS journey_id) FROM journey_metrics LIMIT 1", "one_row_per_journey"),
    ("DELETE FROM journey_handoffs WHERE seq = 2", "handoffs_listed"),
    ("UPDATE journey_handoffs SET team_changed = NOT team_changed WHERE seq = 1", "handoffs_listed"),
    ("UPDATE journey_metrics SET bot_to_human_handoffs = bot_to_human_handoffs + 1", "kinds_add_up"),
    ("UPDATE journey_metrics SET first_resolved_at = first_resolved_at + INTERVAL 1000 DAY", "first_resolution_before_full"),
    ("UPDATE journey_metrics SET time_to_resolution_business_s = time_to_resolution_business_s + 1e7", "business_within_calendar"),
    ("UPDATE journey_metrics SET durable_check_at = now() WHERE durably_resolved", "durable_pending_consistent"),
])
def test_broken_service_tables_fail_by_name(landed, tmp_path, statement, failing):
    bad = tmp_path / "bad.duckdb"
    shutil.copy(landed, bad)
    with duckdb.connect(str(bad)) as con:
        con.execute(statement)
    report = report_for(bad)
    assert not report.success
    assert f"journey_metrics.{failing}" in {f"{r.table}.{r.column}" for r in report.failed}, report.render()


def test_database_landed_before_the_service_metrics(broker, tmp_path):
    """A database whose journeys were landed before the service metrics existed passes the
    suite; a journey's first recompute adds its metrics without a revision of them."""
    from tests.support import table

    topics = new_topics(broker)
    db = tmp_path / "old.duckdb"
    lines = [json.loads(line) for s in SERVICE if s.name.startswith("93_") for line in s.lines]
    send_events(broker, topics, lines[:3])
    run_once(db, broker, topics, service_metrics=CONFIG)
    with duckdb.connect(str(db)) as con:  # as an earlier version left it
        con.execute("DELETE FROM journey_metrics; DELETE FROM journey_handoffs")
    assert report_for(db).success, report_for(db).render()
    send_events(broker, topics, lines[3:])  # the late solve
    run_once(db, broker, topics, service_metrics=CONFIG)
    report = report_for(db)
    assert report.success, report.render()
    (columns,) = table(db, "SELECT changed_columns FROM journey_revisions")[0:1][0]
    assert sorted(columns) == sorted(["status", "resolved_at", "time_to_resolution_s", "fcr", "event_count"])
    assert table(db, "SELECT count(*) FROM journey_metrics") == [(1,)]
