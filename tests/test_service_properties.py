"""Property tests of the service metrics, on the messy streams of tests/test_properties.py.

- Arrival order, duplicates and batching never change journey_metrics or journey_handoffs:
  the pure functions on shuffled input and the pipeline's way (recompute the touched customers
  after every round) give the rows of one full recompute.
- Invariants that tie the tables together (handoff rows add up to handoff_count, the kinds
  partition them, first resolution <= full resolution, business time <= calendar time, ...).
- The pure functions agree with ``tests/oracle.py``'s ``service_rows``, a second implementation
  written from docs/metrics.md, on every column it covers (all but business hours).
- Through the real pipeline: micro-batches equal one batch for both tables, and the revisions
  written along the way end in the landed values.
"""
from __future__ import annotations

import json
import random
from typing import Any

from hypothesis import HealthCheck, Phase, example, given, settings

from pipelines.config.run_config import RunConfig
from pipelines.local.microbatch import MicroBatchRunner
from pipelines.storage.store import Store
from tests import oracle
from tests.support import examples, new_topics, run_once, send_events, table
from tests.test_golden import parse_lines
from tests.test_new_metrics_pipeline import HANDOFF_COLUMNS, METRIC_COLUMNS, _select
from tests.test_properties import GOLDEN, Deliveries, _lines, canonical, deliveries, with_found_examples
from transforms.metrics_config import MetricsConfig, parse_metrics_config
from transforms.service_metrics import assemble_customer

# a calendar with odd hours in a DST zone, so business time is not trivially calendar time
CONFIG = parse_metrics_config("""
durable_days = 2
repeat_contact_window_days = 4
[calendars.default]
timezone = "America/Santiago"
holidays = [2026-03-05]
[calendars.default.hours]
mon = ["08:30-12:00", "13:00-19:45"]
wed = ["00:00-24:00"]
fri = ["09:00-17:00"]
sat = ["10:00-11:00"]
""")
PURE = settings(max_examples=examples(100), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def service(events, config: MetricsConfig = CONFIG) -> tuple[list[dict], list[dict], list[dict]]:
    journeys, metrics, handoffs = [], [], []
    for customer in sorted({e.customer_id for e in events}):
        j, m, h = assemble_customer(customer, events, config=config)
        journeys += j
        metrics += m
        handoffs += h
    return journeys, metrics, handoffs


@PURE
@given(d=deliveries())
@with_found_examples
def test_service_rows_ignore_arrival_order_duplicates_and_batching(d: Deliveries) -> None:
    sent = d.winning_sent
    _, metrics, handoffs = service(parse_lines(_lines(sent)))
    expected = (canonical(metrics), canonical(handoffs))
    shuffled = list(sent)
    random.Random(len(sent)).shuffle(shuffled)
    _, m2, h2 = service(parse_lines(_lines(shuffled)))
    assert (canonical(m2), canonical(h2)) == expected
    # the pipeline's way: after each round, recompute the touched customers from all events so far
    winners = {json.dumps(doc) for doc in sent}
    landed_m: dict[str, dict] = {}
    landed_h: dict[tuple, dict] = {}
    seen: list = []
    for round_docs in d.rounds:
        new = parse_lines([line for line in _lines(round_docs) if line in winners])
        seen.extend(new)
        for customer in {e.customer_id for e in new}:
            landed_m = {k: v for k, v in landed_m.items() if v["customer_id"] != customer}
            landed_h = {k: v for k, v in landed_h.items() if v["customer_id"] != customer}
            _, m, h = assemble_customer(customer, seen, config=CONFIG)
            landed_m.update({r["journey_id"]: r for r in m})
            landed_h.update({(r["journey_id"], r["seq"]): r for r in h})
    assert (canonical(list(landed_m.values())), canonical(list(landed_h.values()))) == expected


@PURE
@given(d=deliveries(max_customers=2))
def test_service_invariants(d: Deliveries) -> None:
    journeys, metrics, handoffs = service(parse_lines(_lines(d.winning_sent)))
    by_id = {j["journey_id"]: j for j in journeys}
    assert sorted(by_id) == sorted(m["journey_id"] for m in metrics)
    for m in metrics:
        j = by_id[m["journey_id"]]
        rows = [h for h in handoffs if h["journey_id"] == m["journey_id"]]
        assert [h["seq"] for h in rows] == list(range(1, len(rows) + 1))
        assert [h["at_us"] for h in rows] == sorted(h["at_us"] for h in rows)
        assert len(rows) == j["handoff_count"]
        assert sum(h["team_changed"] for h in rows) == j["team_handoff_count"]
        assert all(h["team_changed"] or h["agent_changed"] for h in rows)
        kinds = ("bot_to_human", "human_to_bot", "bot_to_bot", "team_to_team", "agent_to_agent")
        assert sum(m[f"{k}_handoffs"] for k in kinds) == j["handoff_count"]
        assert m["agent_pingpong_immediate"] <= m["agent_pingpong_returns"] <= max(0, len(rows))
        assert m["team_pingpong_immediate"] <= m["team_pingpong_returns"]
        assert m["post_reply_reassignments"] <= j["handoff_count"]
        assert m["post_reply_reassignments"] == 0 or j["first_response_s"] is not None
        # resolution kinds
        assert (m["resolution_count"] == 0) == (m["first_resolved_at_us"] is None)
        if j["status"] == "resolved":
            assert m["resolution_count"] >= 1
            assert m["first_resolved_at_us"] <= j["resolved_at_us"]
            assert 0 <= m["first_resolution_s"] <= j["time_to_resolution_s"]
            assert 0 <= m["time_to_resolution_business_s"] <= j["time_to_resolution_s"]
        else:
            assert m["time_to_resolution_business_s"] is None
        if m["durable_check_at_us"] is not None:
            assert m["durably_resolved"] is None and j["status"] == "resolved"
        if m["durably_resolved"] is False:
            assert j["status"] != "resolved"
        if j["first_response_s"] is not None:
            assert 0 <= m["first_response_business_s"] <= j["first_response_s"]
        # repeat contact and one-contact resolution
        if m["repeat_contact_within_s"] is not None:
            assert 0 <= m["repeat_contact_within_s"] <= CONFIG.repeat_contact_window_days * 86400
        assert m["one_contact_resolution"] == (j["fcr"] and m["repeat_contact_within_s"] is None)
        # bots
        assert not m["bot_only"] or (j["first_response_s"] is None and m["first_human_response_after_bot_s"] is None)
        if m["first_human_response_after_bot_s"] is not None:
            assert m["started_with_bot"] and m["bot_handoff_at_us"] is not None
            assert m["first_human_response_after_bot_s"] >= 0
        if m["bot_handoff_at_us"] is not None:
            assert m["started_with_bot"] and m["bot_to_human_handoffs"] >= 1


COVERED = [c for c in METRIC_COLUMNS if c not in
           ("calendar", "time_to_resolution_business_s", "first_response_business_s", "first_resolution_business_s")]


@settings(PURE, max_examples=examples(200))
@given(d=deliveries(max_customers=2))
@with_found_examples
def test_service_metrics_agree_with_the_oracle(d: Deliveries) -> None:
    _, metrics, _ = service(parse_lines(_lines(d.winning_sent)))
    mine = canonical([{c: r[c] for c in COVERED} for r in metrics])
    theirs = canonical([{c: r[c] for c in COVERED}
                        for r in oracle.service_rows(d.lines, CONFIG.durable_days, CONFIG.repeat_contact_window_days)])
    assert mine == theirs


def _landed(db, tbl: str, columns: list[str]) -> list[str]:
    rows = table(db, f"SELECT {_select(columns)} FROM {tbl}")
    return canonical([dict(zip(columns, r)) for r in rows])


def late_solve_case() -> Deliveries:
    """Golden scenario 93 in its two rounds (the solve arrives late): revisions are written."""
    docs = [json.loads(line) for line in (GOLDEN / "93_revision_late_solve_restates_resolution.jsonl").read_text().splitlines()]
    return Deliveries(docs, [docs[:3], docs[3:]], max_batch_events=2)


# Few, small examples: each batch is two Beam runs.
@settings(max_examples=examples(2), deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large])
@given(d=deliveries(max_customers=4, max_lateness=6, max_rounds=3, max_batches_per_round=2))
@example(d=late_solve_case())
def test_service_tables_microbatches_equal_one_batch(broker, tmp_path_factory, d: Deliveries) -> None:
    topics = new_topics(broker)
    folder = tmp_path_factory.mktemp("svc")
    split_db, one_db = folder / "split.duckdb", folder / "one.duckdb"
    config = RunConfig(db=split_db, settings=broker, topics=topics, max_batch_events=d.max_batch_events, service_metrics=CONFIG)
    with Store(split_db) as store:
        runner = MicroBatchRunner(config, store)
        try:
            for round_docs in d.rounds:
                send_events(broker, topics, round_docs)
                assert runner.run_once()
        finally:
            runner.close()
    run_once(one_db, broker, topics, max_batch_events=1_000_000, service_metrics=CONFIG)
    for tbl, columns in (("journey_metrics", METRIC_COLUMNS), ("journey_handoffs", HANDOFF_COLUMNS)):
        assert _landed(split_db, tbl, columns) == _landed(one_db, tbl, columns), tbl
    # the pure functions on the winning copies give the same rows
    _, metrics, handoffs = service(parse_lines(_lines(d.winning_sent)))
    assert _landed(one_db, "journey_metrics", METRIC_COLUMNS) == canonical(
        [{c: r[c] for c in METRIC_COLUMNS} for r in metrics])
    # one batch: every journey lands for the first time, nothing is a revision
    assert table(one_db, "SELECT count(*) FROM journey_revisions") == [(0,)]
    # micro-batches: per journey and column, the latest revision's `after` is the landed value
    final: dict[str, dict[str, Any]] = {}
    for tbl in ("journeys", "journey_metrics"):
        cur = table(split_db, f"SELECT to_json(t)::VARCHAR FROM {tbl} t")
        for (doc,) in cur:
            row = json.loads(doc)
            final.setdefault(row["journey_id"], {}).update(row)
    latest: dict[tuple[str, str], Any] = {}
    for journey_id, change, after in table(split_db, "SELECT journey_id, change, after FROM journey_revisions ORDER BY batch_id"):
        if change == "removed":  # its later values are in its successors' revisions
            continue
        for column, value in json.loads(after).items():
            latest[(journey_id, column)] = value
    for (journey_id, column), value in latest.items():
        if journey_id in final:
            landed = final[journey_id][column]
            if isinstance(value, str) and isinstance(landed, str) and "T" in value:  # timestamps
                from datetime import datetime

                assert datetime.fromisoformat(value) == datetime.fromisoformat(landed), (journey_id, column)
            else:
                assert value == landed, (journey_id, column, value, landed)
