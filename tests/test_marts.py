"""The analyst marts (sql/models/: staging -> core -> marts) on a small dataset computed by hand.

Five customers, five journeys, landed by the real pipeline (broker, Beam, DuckDB):

  c1  J1  email ticket, agent a1 (billing) replies after 20 min, solved after 2 h, CSAT 5       -> FCR
  c2  J2  chat: bot1 -> a2 -> a3 -> a2 (support), escalated into an email ticket for a4 (billing),
          the customer then writes by phone; solved 4 h 21 min after the chat started, CSAT 2
          path chat -> email -> phone (2 hops), 4 handoffs (3 in the chat + the escalation)
  c3  J3  phone ticket: queue tech -> agent a5 (tech) -> team billing -> team tech, then the
          customer writes by email; still open (2 handoffs, both team handoffs, 1 hop)
  c4  J4  messaging chat with a6 (support), ended unresolved; NPS 3 without CSAT
  c5  J5  email ticket, a1 (billing), solved after 1 h, reopened, solved again 4 h after start, CSAT 4
"""
from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb
import pytest

from tests.support import run_once, send_events


def ev(event_id: str, event_type: str, at: str, customer: str, **fields: Any) -> dict[str, Any]:
    return {"event_id": event_id, "event_type": event_type, "occurred_at": at, "customer_id": customer,
            "schema_version": 1, **fields}


def dataset() -> list[dict[str, Any]]:
    d1, d2 = "2025-03-03T", "2025-03-04T"
    return [
        # c1 / J1
        ev("c1-1", "ticket.created", d1 + "09:00:00Z", "c1", ticket_id="t1", channel="email"),
        ev("c1-2", "ticket.assigned", d1 + "09:05:00Z", "c1", ticket_id="t1", handler_type="agent", agent_id="a1", team="billing"),
        ev("c1-3", "ticket.message", d1 + "09:10:00Z", "c1", ticket_id="t1", author="customer", channel="email"),
        ev("c1-4", "ticket.message", d1 + "09:20:00Z", "c1", ticket_id="t1", author="agent", channel="email"),
        ev("c1-5", "ticket.status_changed", d1 + "11:00:00Z", "c1", ticket_id="t1", status="solved"),
        ev("c1-6", "survey.responded", d1 + "12:00:00Z", "c1", survey_id="s1", ticket_id="t1", csat=5),
        # c2 / J2
        ev("c2-1", "chat.started", d1 + "10:00:00Z", "c2", chat_id="ch2", channel="chat"),
        ev("c2-2", "chat.assigned", d1 + "10:00:30Z", "c2", chat_id="ch2", handler_type="bot", agent_id="bot1", team="support"),
        ev("c2-3", "chat.message", d1 + "10:01:00Z", "c2", chat_id="ch2", author="customer"),
        ev("c2-4", "chat.assigned", d1 + "10:05:00Z", "c2", chat_id="ch2", handler_type="agent", agent_id="a2", team="support"),
        ev("c2-5", "chat.assigned", d1 + "10:10:00Z", "c2", chat_id="ch2", handler_type="agent", agent_id="a3", team="support"),
        ev("c2-6", "chat.assigned", d1 + "10:15:00Z", "c2", chat_id="ch2", handler_type="agent", agent_id="a2", team="support"),
        ev("c2-7", "chat.ended", d1 + "10:20:00Z", "c2", chat_id="ch2", outcome="escalated", ticket_id="t2"),
        ev("c2-8", "ticket.created", d1 + "10:21:00Z", "c2", ticket_id="t2", channel="email"),
        ev("c2-9", "ticket.assigned", d1 + "10:25:00Z", "c2", ticket_id="t2", handler_type="agent", agent_id="a4", team="billing"),
        ev("c2-10", "ticket.message", d1 + "11:00:00Z", "c2", ticket_id="t2", author="customer", channel="phone"),
        ev("c2-11", "ticket.message", d1 + "11:30:00Z", "c2", ticket_id="t2", author="agent", channel="email"),
        ev("c2-12", "ticket.status_changed", d1 + "14:21:00Z", "c2", ticket_id="t2", status="solved"),
        ev("c2-13", "survey.responded", d1 + "15:00:00Z", "c2", survey_id="s2", ticket_id="t2", csat=2),
        # c3 / J3 (open)
        ev("c3-1", "ticket.created", d2 + "08:00:00Z", "c3", ticket_id="t3", channel="phone"),
        ev("c3-2", "ticket.assigned", d2 + "08:01:00Z", "c3", ticket_id="t3", handler_type="agent", team="tech"),
        ev("c3-3", "ticket.assigned", d2 + "08:02:00Z", "c3", ticket_id="t3", handler_type="agent", agent_id="a5", team="tech"),
        ev("c3-4", "ticket.assigned", d2 + "08:30:00Z", "c3", ticket_id="t3", handler_type="agent", team="billing"),
        ev("c3-5", "ticket.assigned", d2 + "09:00:00Z", "c3", ticket_id="t3", handler_type="agent", team="tech"),
        ev("c3-6", "ticket.status_changed", d2 + "09:10:00Z", "c3", ticket_id="t3", status="pending"),
        ev("c3-7", "ticket.message", d2 + "09:20:00Z", "c3", ticket_id="t3", author="customer", channel="email"),
        # c4 / J4 (unresolved)
        ev("c4-1", "chat.started", d2 + "12:00:00Z", "c4", chat_id="ch4", channel="messaging"),
        ev("c4-2", "chat.assigned", d2 + "12:01:00Z", "c4", chat_id="ch4", handler_type="agent", agent_id="a6", team="support"),
        ev("c4-3", "chat.message", d2 + "12:02:00Z", "c4", chat_id="ch4", author="customer"),
        ev("c4-4", "chat.ended", d2 + "12:30:00Z", "c4", chat_id="ch4", outcome="unresolved"),
        ev("c4-5", "survey.responded", d2 + "13:00:00Z", "c4", survey_id="s4", chat_id="ch4", nps=3),
        # c5 / J5 (reopened)
        ev("c5-1", "ticket.created", d1 + "09:30:00Z", "c5", ticket_id="t5", channel="email"),
        ev("c5-2", "ticket.assigned", d1 + "09:31:00Z", "c5", ticket_id="t5", handler_type="agent", agent_id="a1", team="billing"),
        ev("c5-3", "ticket.status_changed", d1 + "10:30:00Z", "c5", ticket_id="t5", status="solved"),
        ev("c5-4", "ticket.status_changed", d1 + "12:00:00Z", "c5", ticket_id="t5", status="open"),
        ev("c5-5", "ticket.status_changed", d1 + "13:30:00Z", "c5", ticket_id="t5", status="solved"),
        ev("c5-6", "survey.responded", d1 + "14:00:00Z", "c5", survey_id="s5", ticket_id="t5", csat=4),
    ]


@pytest.fixture(scope="module")
def marts_db(broker, tmp_path_factory) -> Path:
    from tests.support import new_topics

    topics = new_topics(broker)
    db = tmp_path_factory.mktemp("marts") / "journeys.duckdb"
    send_events(broker, topics, dataset())
    run_once(db, broker, topics)
    return db


def rows(db: Path, query: str) -> list[dict[str, Any]]:
    with duckdb.connect(str(db), read_only=True) as con:
        cur = con.execute(query)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]


def close(actual: Any, expected: Any) -> bool:
    if expected is None or actual is None:
        return actual is expected
    if isinstance(expected, float):
        return math.isclose(actual, expected, rel_tol=1e-9, abs_tol=1e-9)
    return actual == expected


def assert_row(actual: dict[str, Any], expected: dict[str, Any]) -> None:
    wrong = {k: (actual[k], v) for k, v in expected.items() if not close(actual[k], v)}
    assert not wrong, f"(actual, expected) differ: {wrong}"


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


def test_journeys_are_as_computed_by_hand(marts_db):
    got = {r["customer_id"]: r for r in rows(marts_db, "SELECT * FROM core_journeys")}
    assert sorted(got) == ["c1", "c2", "c3", "c4", "c5"]
    assert_row(got["c1"], dict(status="resolved", fcr=True, time_to_resolution_s=7200.0, first_response_s=1200.0,
                               handoff_count=0, channel_hops=0, csat=5, entry_channel="email", team="billing"))
    assert_row(got["c2"], dict(status="resolved", fcr=False, time_to_resolution_s=15660.0, first_response_s=5400.0,
                               handoff_count=4, team_handoff_count=1, channel_hops=2, contact_count=2, csat=2,
                               entry_channel="chat", entry_team="support", team="billing", handoff_bucket="3+", hop_bucket="2"))
    assert_row(got["c3"], dict(status="open", is_open=True, handoff_count=2, team_handoff_count=2, channel_hops=1,
                               entry_channel="phone", team="tech", csat=None))
    assert_row(got["c4"], dict(status="unresolved", time_to_resolution_s=None, handoff_count=0, channel_hops=0,
                               entry_channel="messaging", team="support", csat=None, nps=3))
    assert_row(got["c5"], dict(status="resolved", fcr=False, reopen_count=1, time_to_resolution_s=14400.0,
                               first_response_s=None, csat=4, team="billing"))


def test_touchpoints_agree_with_journey_metrics(marts_db):
    """core_touchpoints re-derives touchpoints in SQL: counts and hops equal the pipeline's."""
    assert rows(marts_db, """
        SELECT count(*) AS n FROM core_journeys j
        LEFT JOIN (SELECT journey_id, count(*) AS tp, sum(is_hop::INT) AS hops FROM core_touchpoints GROUP BY ALL) t
          USING (journey_id)
        WHERE coalesce(t.tp, 0) <> j.touchpoint_count OR coalesce(t.hops, 0) <> j.channel_hops""") == [{"n": 0}]
    c2 = rows(marts_db, "SELECT kind, channel FROM core_touchpoints WHERE customer_id = 'c2' ORDER BY seq")
    assert [(r["kind"], r["channel"]) for r in c2] == [
        ("thread_start", "chat"), ("customer_message", "chat"), ("thread_start", "email"), ("customer_message", "phone")]


def test_daily_kpis(marts_db):
    got = {(str(r["day"]), r["channel"], r["team"]): r for r in rows(marts_db, "SELECT * FROM mart_daily_kpis")}
    assert sorted(got) == [("2025-03-03", "chat", "billing"), ("2025-03-03", "email", "billing"),
                           ("2025-03-04", "messaging", "support"), ("2025-03-04", "phone", "tech")]
    # J1 (2 h, FCR, CSAT 5, first response 20 min) and J5 (4 h, reopened, CSAT 4)
    assert_row(got[("2025-03-03", "email", "billing")], dict(
        journeys=2, resolved_journeys=2, open_journeys=0, unresolved_journeys=0,
        median_ttr_h=3.0, p90_ttr_h=2.0 + 0.9 * 2.0, fcr_journeys=1, fcr_rate=0.5,
        avg_handoffs=0.0, avg_channel_hops=0.0, avg_contacts=1.0, median_first_response_min=20.0,
        csat_responses=2, avg_csat=4.5, csat_satisfied_rate=1.0))
    assert_row(got[("2025-03-03", "chat", "billing")], dict(
        journeys=1, resolved_journeys=1, median_ttr_h=4.35, p90_ttr_h=4.35, fcr_journeys=0, fcr_rate=0.0,
        avg_handoffs=4.0, avg_team_handoffs=1.0, avg_channel_hops=2.0, avg_contacts=2.0,
        median_first_response_min=90.0, csat_responses=1, avg_csat=2.0, csat_satisfied_rate=0.0))
    assert_row(got[("2025-03-04", "phone", "tech")], dict(
        journeys=1, open_journeys=1, resolved_journeys=0, median_ttr_h=None, fcr_rate=None,
        avg_handoffs=2.0, avg_channel_hops=1.0, csat_responses=0, avg_csat=None, csat_satisfied_rate=None))
    assert_row(got[("2025-03-04", "messaging", "support")], dict(
        journeys=1, unresolved_journeys=1, fcr_rate=None, avg_handoffs=0.0, csat_responses=0))


def test_channel_paths(marts_db):
    got = {r["path"]: r for r in rows(marts_db, "SELECT * FROM mart_channel_paths")}
    assert sorted(got) == ["chat -> email -> phone", "email", "messaging", "phone -> email"]
    assert_row(got["email"], dict(journeys=2, share=0.4, path_length=1, channel_hops=0, resolved_journeys=2,
                                  fcr_rate=0.5, median_ttr_h=3.0, avg_csat=4.5, csat_responses=2))
    assert_row(got["chat -> email -> phone"], dict(journeys=1, share=0.2, path_length=3, channel_hops=2,
                                                   resolved_journeys=1, fcr_rate=0.0, avg_handoffs=4.0, avg_csat=2.0))
    assert_row(got["phone -> email"], dict(journeys=1, path_length=2, channel_hops=1, resolved_journeys=0,
                                           fcr_rate=None, median_ttr_h=None))


def test_handoff_pingpong(marts_db):
    got = rows(marts_db, "SELECT * FROM mart_handoff_pingpong ORDER BY level")
    assert len(got) == 2
    assert_row(got[0], dict(level="agent", handler_a="a2", handler_b="a3", pattern="a2 -> a3 -> a2",
                            bounces=1, threads=1, journeys=1,
                            first_bounce_at=utc("2025-03-03T10:15:00"), last_bounce_at=utc("2025-03-03T10:15:00")))
    assert_row(got[1], dict(level="team", handler_a="tech", handler_b="billing", pattern="tech -> billing -> tech",
                            bounces=1, threads=1, journeys=1))


def test_open_backlog(marts_db):
    got = rows(marts_db, "SELECT * FROM mart_open_backlog")
    assert len(got) == 1  # only J3 is open; as_of = the latest event (c4's survey, 2025-03-04 13:00)
    assert_row(got[0], dict(as_of=utc("2025-03-04T13:00:00"), age_bucket="4-24h", bucket_order=3, channel="phone",
                            open_journeys=1, median_age_h=5.0, max_age_h=5.0, oldest_started_at=utc("2025-03-04T08:00:00"),
                            median_idle_h=3.67, with_handoffs=1, with_reopens=0))


def test_csat_by_friction(marts_db):
    got = {(r["handoff_bucket"], r["hop_bucket"]): r for r in rows(marts_db, "SELECT * FROM mart_csat_by_friction")}
    assert sorted(got) == [("0", "0"), ("2", "1"), ("3+", "2")]
    assert_row(got[("0", "0")], dict(journeys=3, csat_responses=2, response_rate=0.6667, csat_sum=9, avg_csat=4.5,
                                     satisfied_responses=2, csat_satisfied_rate=1.0, nps_responses=1, avg_nps=3.0))
    assert_row(got[("3+", "2")], dict(journeys=1, csat_responses=1, csat_sum=2, avg_csat=2.0, csat_satisfied_rate=0.0))
    assert_row(got[("2", "1")], dict(journeys=1, csat_responses=0, response_rate=0.0, csat_sum=None, avg_csat=None,
                                     csat_satisfied_rate=None))


def test_marts_do_not_depend_on_the_session_time_zone(marts_db):
    with duckdb.connect(str(marts_db), read_only=True) as con:
        con.execute("SET TimeZone = 'Pacific/Kiritimati'")  # UTC+14: local days differ from UTC days
        days = sorted({str(r[0]) for r in con.execute("SELECT day FROM mart_daily_kpis").fetchall()})
    assert days == ["2025-03-03", "2025-03-04"]


def test_journey_paths_and_open_journeys(marts_db):
    paths = {r["journey_id"]: r for r in rows(marts_db, "SELECT p.*, j.customer_id, j.channel_hops FROM core_journey_paths p "
                                                      "JOIN core_journeys j USING (journey_id)")}
    by_customer = {r["customer_id"]: (r["path"], r["path_length"], r["path_hops"]) for r in paths.values()}
    assert by_customer == {"c1": ("email", 1, 0), "c2": ("chat -> email -> phone", 3, 2), "c3": ("phone -> email", 2, 1),
                           "c4": ("messaging", 1, 0), "c5": ("email", 1, 0)}
    assert all(r["path_hops"] == r["channel_hops"] for r in paths.values())
    (open_j,) = rows(marts_db, "SELECT * FROM core_open_journeys")
    assert_row(open_j, dict(customer_id="c3", entry_channel="phone", team="tech", as_of=utc("2025-03-04T13:00:00"),
                            age_h=5.0, idle_h=220 / 60, bucket_order=3, age_bucket="4-24h", handoff_count=2, reopen_count=0))


def test_sums_roll_up_exactly(marts_db):
    got = {(str(r["day"]), r["channel"], r["team"]): r for r in rows(marts_db, "SELECT * FROM mart_daily_kpis")}
    assert_row(got[("2025-03-03", "email", "billing")], dict(handoff_sum=0, channel_hop_sum=0, csat_sum=9, satisfied_responses=2))
    assert_row(got[("2025-03-03", "chat", "billing")], dict(handoff_sum=4, channel_hop_sum=2, csat_sum=2, satisfied_responses=0))
    # the docs' roll-ups (sum / count) equal the same figures computed from the journeys
    rolled = rows(marts_db, """SELECT sum(csat_sum) / sum(csat_responses) AS csat, sum(handoff_sum) / sum(journeys) AS handoffs
                               FROM mart_daily_kpis""")[0]
    direct = rows(marts_db, "SELECT avg(csat) AS csat, avg(handoff_count) AS handoffs FROM core_journeys")[0]
    assert_row(rolled, direct)
    friction = rows(marts_db, "SELECT sum(nps_sum) AS n, sum(nps_responses) AS r FROM mart_csat_by_friction")[0]
    assert friction == {"n": 3, "r": 1}
    paths = rows(marts_db, "SELECT sum(csat_sum) AS s FROM mart_channel_paths")[0]
    assert paths == {"s": 11}


def test_mart_floats_are_rounded(marts_db):
    """Every DOUBLE of every mart has at most 4 decimals (hours and means 2, rates 4)."""
    with duckdb.connect(str(marts_db), read_only=True) as con:
        doubles = con.execute("""SELECT table_name, column_name FROM duckdb_columns()
                                 WHERE table_name LIKE 'mart_%' AND data_type IN ('DOUBLE', 'FLOAT')""").fetchall()
        assert len(doubles) >= 20
        for table, column in doubles:
            decimals = 2 if column.endswith(("_h", "_min")) or column.startswith("avg_") else 4
            bad = con.execute(f'SELECT count(*) FROM {table} WHERE "{column}" <> round("{column}", {decimals})').fetchone()[0]
            assert bad == 0, f"{table}.{column} is not rounded to {decimals} decimals"
