"""History pruning through the real pipeline: a batch loads only the part of a touched
customer's history it can still change, and the results equal a whole-history recompute.

Each scenario is one customer: a history landed in a first round, then events a round later
that either leave its old journeys settled (pruned) or reach back into them (the customer is
recomputed whole). The same rounds are landed three ways: with pruning, without it, and in
one batch; every journey table (and the revisions) must agree exactly.
"""
from __future__ import annotations

import random
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import pipelines.local.microbatch as microbatch
from pipelines.local.microbatch import MicroBatchRunner, RunConfig
from pipelines.storage.store import Store
from tests.support import JOURNEY_COLUMNS, examples, new_topics, send_events, table

BASE = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)


def ev(customer: str, n: int, event_type: str, day: float, **fields: Any) -> dict[str, Any]:
    at = BASE + timedelta(days=day)
    doc = {"event_id": f"{customer}-{n:03d}", "event_type": event_type, "occurred_at": at.isoformat(),
           "customer_id": customer, "schema_version": 1}
    doc.update(fields)
    return doc


def ticket(customer: str, n: int, tid: str, day: float, solved_after: float | None = 0.2, agent: str = "a1") -> list[dict]:
    """A ticket's life: created, assigned, an agent reply, solved (unless ``solved_after`` is None)."""
    out = [ev(customer, n, "ticket.created", day, ticket_id=tid, channel="email"),
           ev(customer, n + 1, "ticket.assigned", day + 0.01, ticket_id=tid, handler_type="agent", agent_id=agent, team="t1"),
           ev(customer, n + 2, "ticket.message", day + 0.02, ticket_id=tid, author="agent", channel="email")]
    if solved_after is not None:
        out.append(ev(customer, n + 3, "ticket.status_changed", day + solved_after, ticket_id=tid, status="solved"))
    return out


def scenarios() -> tuple[list[dict], list[dict], dict[str, int]]:
    """(first round, second round, settled journeys expected per customer in the second round)."""
    first: list[dict] = []
    second: list[dict] = []
    expect: dict[str, int] = {}
    # settled: two old journeys settle, the third (within 7 days of the latest) is recomputed
    c = "settled"
    first += ticket(c, 0, "T1", 0) + ticket(c, 10, "T2", 15) + ticket(c, 20, "T3", 36)
    second += ticket(c, 30, "T4", 55) + [ev(c, 40, "survey.responded", 55.5, survey_id="S1", ticket_id="T4", csat=5, nps=9)]
    expect[c] = 2
    # reopen: an old ticket is reopened months later: recomputed whole
    c = "reopen"
    first += ticket(c, 0, "T1", 0) + ticket(c, 10, "T2", 36)
    second += [ev(c, 30, "ticket.status_changed", 55, ticket_id="T1", status="open")]
    expect[c] = 0
    # link: a new chat escalates into an old ticket (chat.ended with its ticket_id)
    c = "link"
    first += ticket(c, 0, "T1", 0) + ticket(c, 10, "T2", 36)
    second += [ev(c, 30, "chat.started", 55, chat_id="C9", channel="chat"),
               ev(c, 31, "chat.ended", 55.1, chat_id="C9", outcome="escalated", ticket_id="T1")]
    expect[c] = 0
    # chat: a survey of a settled chat arrives months later (it names the chat only): recomputed whole
    c = "chat"
    first += [ev(c, 0, "chat.started", 0, chat_id="C1", channel="chat"),
              ev(c, 1, "chat.ended", 0.1, chat_id="C1", outcome="resolved")]
    first += ticket(c, 10, "T2", 15) + ticket(c, 20, "T3", 36)
    second += ticket(c, 30, "T4", 55) + [ev(c, 40, "survey.responded", 55.5, survey_id="S1", chat_id="C1", csat=2, nps=3)]
    expect[c] = 0
    # survey moves: an old survey named an unknown ticket besides its chat; that ticket appears now
    c = "survey"
    first += [ev(c, 0, "chat.started", 0, chat_id="C1", channel="chat"),
              ev(c, 1, "chat.ended", 0.1, chat_id="C1", outcome="resolved"),
              ev(c, 2, "survey.responded", 1, survey_id="S1", chat_id="C1", ticket_id="T7", csat=2, nps=3)]
    first += ticket(c, 10, "T2", 36)
    second += ticket(c, 30, "T7", 55)
    expect[c] = 0
    # orphan: a survey of a ticket nobody has seen landed first (it has no journey, so no link);
    # the ticket comes now, its journey takes the survey, and the oldest journey stays settled
    # (T2, the latest journey landed, is recomputed)
    c = "orphan"
    first += ticket(c, 0, "T1", 0) + ticket(c, 10, "T2", 15)
    first += [ev(c, 20, "survey.responded", 55.5, survey_id="S1", ticket_id="T3", csat=4, nps=8)]
    second += ticket(c, 30, "T3", 55)
    expect[c] = 1
    # late: a new thread that starts before everything landed
    c = "late"
    first += ticket(c, 0, "T1", 0) + ticket(c, 10, "T2", 36)
    second += ticket(c, 30, "T0", -3)
    expect[c] = 0
    # durable: the only old journey is within 7 days of the latest landed event: its durability
    # is still undecided, and the new events decide it
    c = "durable"
    first += ticket(c, 0, "T1", 0)
    second += ticket(c, 30, "T2", 55)
    expect[c] = 0
    # walk back: T1 reopened after T3 started; T3 is still open: nothing settles
    c = "walkback"
    first += ticket(c, 0, "T1", 0) + ticket(c, 10, "T2", 15)
    first += [ev(c, 20, "ticket.status_changed", 30, ticket_id="T1", status="open"),
              ev(c, 21, "ticket.status_changed", 30.5, ticket_id="T1", status="solved")]
    first += ticket(c, 30, "T3", 28, solved_after=None)
    second += ticket(c, 40, "T9", 60)
    expect[c] = 0
    # replaced: a conflicting copy of an old event wins: its customer is recomputed whole
    c = "replaced"
    first += ticket(c, 0, "T1", 0) + ticket(c, 10, "T2", 36)
    copy = dict(ticket(c, 0, "T1", 0)[1])
    copy["agent_id"] = "a0"  # a different payload; which copy wins is decided by content hash
    second += [copy] + ticket(c, 30, "T5", 55)
    expect[c] = 0  # or 1 if the landed copy keeps winning: checked below from the landed rows
    return first, second, expect


def land_rounds(broker, topics: dict[str, str], db: Path, rounds: list[list[dict]], prune: bool,
                max_batch_events: int = 1_000_000) -> list[dict[str, int]]:
    """Lands each round with one runner (as `run --follow` would); returns the settled
    journeys per customer of every batch."""
    settled: list[dict[str, int]] = []
    saved = microbatch.PRUNE_SETTLED_HISTORY
    microbatch.PRUNE_SETTLED_HISTORY = prune
    try:
        with Store(db) as store:
            runner = MicroBatchRunner(RunConfig(db=db, settings=broker, topics=topics, max_batch_events=max_batch_events), store)
            try:
                for docs in rounds:
                    before = table_count(store)
                    send_events(broker, topics, docs)
                    batches = runner.run_once()
                    assert batches and table_count(store) >= before
                    settled.extend(b.extra.get("settled_journeys", {}) for b in batches)
            finally:
                runner.close()
    finally:
        microbatch.PRUNE_SETTLED_HISTORY = saved
    return settled


def table_count(store: Store) -> int:
    return store.count("events")


def journey_tables(db: Path, with_revisions: bool) -> dict[str, list]:
    out = {
        "journeys": table(db, f"SELECT {JOURNEY_COLUMNS} FROM journeys ORDER BY journey_id"),
        "journey_events": table(db, "SELECT * EXCLUDE (batch_id) FROM journey_events ORDER BY event_id"),
        "journey_metrics": table(db, "SELECT * EXCLUDE (batch_id) FROM journey_metrics ORDER BY journey_id"),
        "journey_handoffs": table(db, "SELECT * EXCLUDE (batch_id) FROM journey_handoffs ORDER BY journey_id, seq"),
    }
    if with_revisions:
        out["journey_revisions"] = table(
            db, "SELECT * EXCLUDE (revised_at) FROM journey_revisions ORDER BY batch_id, journey_id, change")
    return out


def rows_off_their_journeys_batch(db: Path) -> dict[str, int]:
    """By table: rows of a journey whose batch id is not its journeys row's (or that have no
    journeys row). The landing finds a touched customer's links, metrics and handoffs by the
    batch ids of their journeys rows (Store._touched_by_journey_batch), so every landing,
    settled journeys left alone included, must keep them equal."""
    return {t: table(db, f"""SELECT count(*) FROM {t} r LEFT JOIN journeys j USING (journey_id)
                             WHERE j.batch_id IS DISTINCT FROM r.batch_id""")[0][0]
            for t in ("journey_events", "journey_metrics", "journey_handoffs")}


NONE_OFF = {"journey_events": 0, "journey_metrics": 0, "journey_handoffs": 0}


def test_settled_journeys_are_left_out_and_results_equal_a_whole_history_recompute(broker, tmp_path):
    first, second, expect = scenarios()
    pruned_db, full_db, one_db = tmp_path / "pruned.duckdb", tmp_path / "full.duckdb", tmp_path / "one.duckdb"
    topics = new_topics(broker)
    settled = land_rounds(broker, topics, pruned_db, [first, second], prune=True)
    topics_full = new_topics(broker)
    assert land_rounds(broker, topics_full, full_db, [first, second], prune=False) == [{}, {}]
    topics_one = new_topics(broker)
    land_rounds(broker, topics_one, one_db, [first + second], prune=True)

    # the replaced scenario: its customer is recomputed whole only if the batch's copy won
    replaced = table(pruned_db, "SELECT count(*) FROM event_replacements")[0][0]
    expect["replaced"] = 0 if replaced else 1
    assert settled[0] == {}  # nothing landed before the first round
    assert settled[1] == {c: n for c, n in expect.items() if n}
    pruned = journey_tables(pruned_db, with_revisions=True)
    assert pruned == journey_tables(full_db, with_revisions=True)
    assert journey_tables(one_db, with_revisions=False) == {k: v for k, v in pruned.items() if k != "journey_revisions"}
    # the settled rows were really left alone: still the first batch's
    assert table(pruned_db, "SELECT count(*) FROM journeys WHERE customer_id = 'settled' AND batch_id = 1") == [(2,)]
    assert table(full_db, "SELECT count(*) FROM journeys WHERE customer_id = 'settled' AND batch_id = 1") == [(0,)]
    assert table(pruned_db, "SELECT count(DISTINCT batch_id) FROM journey_events") == [(2,)]
    for db in (pruned_db, full_db, one_db):
        assert rows_off_their_journeys_batch(db) == NONE_OFF, db.name


def test_the_landings_first_reads_made_beside_the_assembly_equal_those_made_in_the_landing(broker, tmp_path, monkeypatch):
    """Store.read_before_landing runs on a thread of its own while the batch assembles (no
    worker busy here): the landing then uses its reads instead of making them, and every
    journey table and revision equals a run whose landing reads them itself."""
    first, second, _ = scenarios()
    read_on: list[str] = []
    snapshot = Store._snapshot_before

    def noted(self: Store, touched_rows: dict[str, str]) -> int:
        read_on.append(threading.current_thread().name)
        return snapshot(self, touched_rows)

    monkeypatch.setattr(Store, "_snapshot_before", noted)
    beside_db, inside_db = tmp_path / "beside.duckdb", tmp_path / "inside.duckdb"
    land_rounds(broker, new_topics(broker), beside_db, [first, second], prune=True)
    assert read_on == ["cxj-read-before-landing"] * 2  # once per batch, and not again in the landing
    monkeypatch.setattr(Store, "read_before_landing", lambda self: None)
    land_rounds(broker, new_topics(broker), inside_db, [first, second], prune=True)
    assert read_on[2:] == ["MainThread"] * 2
    beside = journey_tables(beside_db, with_revisions=True)
    assert beside["journey_revisions"] and beside == journey_tables(inside_db, with_revisions=True)


# ------------------------------------------------------------------ random long histories

@st.composite
def long_histories(draw: st.DrawFn) -> list[list[dict]]:
    """Customers with many threads weeks apart (so journeys settle), delivered in 2-3 rounds in
    roughly event-time order, with some events very late and some naming old threads again."""
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    docs: list[dict] = []
    for ci in range(draw(st.integers(2, 4))):
        c = f"h{ci}"
        day, n = 0.0, 0
        for ti in range(draw(st.integers(2, 6))):
            day += rng.choice([0.5, 2, 3.5, 8, 20, 40])
            if rng.random() < 0.3:
                cid = f"C{ti}"
                docs += [ev(c, n, "chat.started", day, chat_id=cid, channel="chat"),
                         ev(c, n + 1, "chat.ended", day + 0.05, chat_id=cid,
                            outcome=rng.choice(["resolved", "escalated", "unresolved"]),
                            **({"ticket_id": f"T{rng.randrange(ti + 1)}"} if rng.random() < 0.4 else {}))]
                n += 2
            else:
                docs += ticket(c, n, f"T{ti}", day, solved_after=rng.choice([0.1, 2.0, None]), agent=rng.choice(["a1", "a2"]))
                n += 4
            if rng.random() < 0.25:  # an old thread comes back (reopened or solved again) or is surveyed, later
                old, later = f"T{rng.randrange(ti + 1)}", day + rng.choice([1, 9, 30])
                if rng.random() < 0.5:
                    docs.append(ev(c, n, "ticket.status_changed", later, ticket_id=old, status=rng.choice(["open", "solved"])))
                else:
                    docs.append(ev(c, n, "survey.responded", later, survey_id=f"S{n}", ticket_id=old, csat=4))
                n += 1
    docs.sort(key=lambda d: (d["occurred_at"], d["event_id"]))
    # a few events arrive very late (in the last round)
    late = [d for d in docs if rng.random() < 0.08]
    on_time = [d for d in docs if d not in late]
    cuts = sorted(rng.sample(range(1, len(on_time)), draw(st.integers(1, 2))))
    rounds = [on_time[a:b] for a, b in zip([0] + cuts, cuts + [len(on_time)])]
    rounds[-1] = rounds[-1] + late
    return rounds


@pytest.mark.slow
@settings(max_examples=examples(3), deadline=None, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(rounds=long_histories())
def test_random_long_histories_land_the_same_with_and_without_pruning(broker, tmp_path_factory, rounds):
    folder = tmp_path_factory.mktemp("prune")
    pruned_db, full_db = folder / "pruned.duckdb", folder / "full.duckdb"
    land_rounds(broker, new_topics(broker), pruned_db, rounds, prune=True)
    land_rounds(broker, new_topics(broker), full_db, rounds, prune=False)
    assert journey_tables(pruned_db, with_revisions=True) == journey_tables(full_db, with_revisions=True)
    assert rows_off_their_journeys_batch(pruned_db) == rows_off_their_journeys_batch(full_db) == NONE_OFF
