"""Late data through the real pipeline: events that arrive after their journey was landed.

A batch recomputes every journey of the customers it touches from all their stored events
and replaces those customers' rows in one transaction (docs/architecture.md). So a late
event updates its journey in place, a late event that changes a journey's first thread
(and so its journey_id) leaves no stale row, a late event can split or merge journeys, and
no journey_id is ever landed twice, after any batch.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.config.run_config import RunConfig
from pipelines.local.microbatch import MicroBatchRunner
from pipelines.storage.store import Store
from tests.support import run_once, send_events, table
from transforms.journeys import journey_id_for


def event(event_id: str, event_type: str, at: str, customer: str = "late-c1", **fields: Any) -> dict[str, Any]:
    doc = {"event_id": event_id, "event_type": event_type, "occurred_at": f"2026-03-{at}Z",
           "customer_id": customer, "schema_version": 1}
    doc.update(fields)
    return doc


def rows(db: Path, customer: str) -> list[dict[str, Any]]:
    names = ["journey_id", "status", "started_at", "resolved_at", "first_response_s", "contact_count",
             "reopen_count", "threads", "event_count", "batch_id"]
    found = table(db, f"SELECT {', '.join(names)} FROM journeys WHERE customer_id = '{customer}' ORDER BY started_at")
    return [dict(zip(names, r)) for r in found]


def links(db: Path, customer: str) -> dict[str, str]:
    return dict(table(db, f"SELECT event_id, journey_id FROM journey_events WHERE customer_id = '{customer}'"))


def assert_consistent(db: Path) -> None:
    assert table(db, "SELECT count(*) - count(DISTINCT journey_id) FROM journeys") == [(0,)]
    assert table(db, "SELECT count(*) - count(DISTINCT event_id) FROM journey_events") == [(0,)]
    assert table(db, "SELECT count(*) FROM journey_events WHERE journey_id NOT IN (SELECT journey_id FROM journeys)") == [(0,)]
    assert table(db, """SELECT count(*) FROM journeys j
                        WHERE event_count <> (SELECT count(*) FROM journey_events e WHERE e.journey_id = j.journey_id)""") == [(0,)]


def test_late_event_updates_its_journey_in_place(broker, topics, db):
    send_events(broker, topics, [
        event("a1", "ticket.created", "02T09:00:00", ticket_id="T1", channel="email"),
        event("a2", "ticket.assigned", "02T09:05:00", ticket_id="T1", handler_type="agent", agent_id="ag1", team="support"),
        event("b1", "ticket.created", "02T09:00:00", customer="late-other", ticket_id="X1", channel="web"),
    ])
    run_once(db, broker, topics)
    (before,) = rows(db, "late-c1")
    other_before = rows(db, "late-other")
    assert before["status"] == "open" and before["first_response_s"] is None

    # arrives a batch later, but happened between the landed events and after them
    send_events(broker, topics, [
        event("a3", "ticket.message", "02T09:03:00", ticket_id="T1", author="agent", channel="email"),
        event("a4", "ticket.status_changed", "02T10:00:00", ticket_id="T1", status="solved"),
    ])
    run_once(db, broker, topics)
    (after,) = rows(db, "late-c1")
    assert after["journey_id"] == before["journey_id"] == journey_id_for("late-c1", ("ticket", "T1"))
    assert after["status"] == "resolved" and after["first_response_s"] == 180.0
    assert after["event_count"] == 4 and after["batch_id"] > before["batch_id"]
    assert set(links(db, "late-c1")) == {"a1", "a2", "a3", "a4"}
    assert rows(db, "late-other") == other_before  # customers the batch did not touch are not rewritten
    assert_consistent(db)


def test_late_event_that_changes_the_first_thread_leaves_no_stale_row(broker, topics, db):
    send_events(broker, topics, [
        event("c3", "ticket.created", "02T10:00:00", ticket_id="T2", channel="web"),
        event("c4", "ticket.status_changed", "02T11:00:00", ticket_id="T2", status="solved"),
    ])
    run_once(db, broker, topics)
    (before,) = rows(db, "late-c1")
    assert before["journey_id"] == journey_id_for("late-c1", ("ticket", "T2"))

    # a ticket that started earlier, ended 30 min before T2 started: same journey, now its first thread
    send_events(broker, topics, [
        event("c1", "ticket.created", "02T09:00:00", ticket_id="T1", channel="email"),
        event("c2", "ticket.status_changed", "02T09:30:00", ticket_id="T1", status="solved"),
    ])
    run_once(db, broker, topics)
    (after,) = rows(db, "late-c1")
    assert after["journey_id"] == journey_id_for("late-c1", ("ticket", "T1")) != before["journey_id"]
    assert after["threads"] == ["ticket:T1", "ticket:T2"] and after["contact_count"] == 2
    assert table(db, f"SELECT count(*) FROM journeys WHERE journey_id = '{before['journey_id']}'") == [(0,)]
    assert set(links(db, "late-c1").values()) == {after["journey_id"]}
    assert_consistent(db)


def test_late_earlier_event_of_the_same_thread_moves_the_start_not_the_id(broker, topics, db):
    send_events(broker, topics, [event("d2", "ticket.created", "02T09:10:00", ticket_id="T1", channel="email")])
    run_once(db, broker, topics)
    (before,) = rows(db, "late-c1")
    send_events(broker, topics, [event("d1", "ticket.message", "02T09:00:00", ticket_id="T1", author="customer", channel="email")])
    run_once(db, broker, topics)
    (after,) = rows(db, "late-c1")
    assert after["journey_id"] == before["journey_id"]
    assert (after["started_at"] - before["started_at"]).total_seconds() == -600
    assert_consistent(db)


def test_late_resolution_splits_a_journey(broker, topics, db):
    # T2 joined T1's journey because T1 looked open; T1's late "solved" shows it ended 6 days before T2
    send_events(broker, topics, [
        event("e1", "ticket.created", "02T09:00:00", ticket_id="T1", channel="email"),
        event("e3", "ticket.created", "08T09:00:00", ticket_id="T2", channel="phone"),
    ])
    run_once(db, broker, topics)
    (merged,) = rows(db, "late-c1")
    assert merged["threads"] == ["ticket:T1", "ticket:T2"]
    send_events(broker, topics, [event("e2", "ticket.status_changed", "02T10:00:00", ticket_id="T1", status="solved")])
    run_once(db, broker, topics)
    first, second = rows(db, "late-c1")
    assert first["journey_id"] == merged["journey_id"] and first["threads"] == ["ticket:T1"]
    assert first["status"] == "resolved" and first["contact_count"] == 1
    assert second["journey_id"] == journey_id_for("late-c1", ("ticket", "T2")) and second["status"] == "open"
    assert links(db, "late-c1") == {"e1": first["journey_id"], "e2": first["journey_id"], "e3": second["journey_id"]}
    assert_consistent(db)


def test_late_reopen_merges_journeys(broker, topics, db):
    send_events(broker, topics, [
        event("f1", "ticket.created", "02T09:00:00", ticket_id="T1", channel="email"),
        event("f2", "ticket.status_changed", "02T10:00:00", ticket_id="T1", status="solved"),
        event("f5", "ticket.created", "06T09:00:00", ticket_id="T2", channel="email"),
    ])
    run_once(db, broker, topics)
    assert [r["threads"] for r in rows(db, "late-c1")] == [["ticket:T1"], ["ticket:T2"]]
    send_events(broker, topics, [
        event("f3", "ticket.status_changed", "04T09:00:00", ticket_id="T1", status="open"),
        event("f4", "ticket.status_changed", "04T12:00:00", ticket_id="T1", status="solved"),
    ])
    run_once(db, broker, topics)
    (merged,) = rows(db, "late-c1")
    assert merged["threads"] == ["ticket:T1", "ticket:T2"] and merged["reopen_count"] == 1
    assert table(db, f"SELECT count(*) FROM journeys WHERE journey_id = '{journey_id_for('late-c1', ('ticket', 'T2'))}'") == [(0,)]
    assert_consistent(db)


def test_no_journey_is_ever_landed_twice(broker, topics, db):
    """A stream delivered newest-first, two events per batch: after every batch each
    journey_id is unique, each event is in at most one journey, and links match rows."""
    stream = [
        event("g1", "chat.started", "02T09:00:00", chat_id="C1", channel="chat"),
        event("g2", "chat.ended", "02T09:10:00", chat_id="C1", outcome="escalated", ticket_id="T1"),
        event("g3", "ticket.created", "05T09:00:00", ticket_id="T1", channel="email"),
        event("g4", "ticket.status_changed", "05T10:00:00", ticket_id="T1", status="solved"),
        event("g5", "ticket.created", "09T09:00:00", ticket_id="T2", channel="web"),
        event("g6", "ticket.status_changed", "06T09:00:00", ticket_id="T1", status="open"),
        event("g7", "survey.responded", "06T08:00:00", survey_id="S1", ticket_id="T1", csat=4),
        event("g8", "ticket.status_changed", "07T09:00:00", ticket_id="T1", status="solved"),
    ]
    send_events(broker, topics, list(reversed(stream)))
    checked: list[int] = []
    with Store(db) as store:
        runner = MicroBatchRunner(RunConfig(db=db, settings=broker, topics=topics, max_batch_events=2), store)
        try:
            _, _, targets = runner.broker_positions()
            while (batch := runner.run_batch(targets)) is not None:
                con = store.con
                assert con.execute("SELECT count(*) - count(DISTINCT journey_id) FROM journeys").fetchone() == (0,)
                assert con.execute("SELECT count(*) - count(DISTINCT event_id) FROM journey_events").fetchone() == (0,)
                assert con.execute(
                    "SELECT count(*) FROM journey_events WHERE journey_id NOT IN (SELECT journey_id FROM journeys)"
                ).fetchone() == (0,)
                checked.append(batch.batch_id)
        finally:
            runner.close()
    assert len(checked) >= 4
    (journey,) = rows(db, "late-c1")  # T2 starts 48 h after T1's last solve: one journey in the end
    assert journey["threads"] == ["chat:C1", "ticket:T1", "ticket:T2"] and journey["reopen_count"] == 1
    assert journey["journey_id"] == journey_id_for("late-c1", ("chat", "C1"))
    assert_consistent(db)
