"""The service metrics through the real pipeline (broker, Beam, DuckDB).

- Every service golden scenario (63 and up) is sent in its rounds, with a pipeline run after each;
  journey_metrics and journey_handoffs are compared with the hand-derived rows after every round,
  and journey_revisions with the scenario's expected revisions at the end.
- The landed tables agree with each other: one journey_metrics row per journey, and the handoff
  rows add up to handoff_count / team_handoff_count.
- `cxj run --calendars FILE` as a real subprocess: a good file is used, a bad one stops the run
  with one line naming the file and exit 4.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from pipelines.storage.quoting import sql_literal
from tests.support import run_once, send_events, table
from tests.test_service_metrics_golden import (
    CONFIG,
    CONFIG_FILE,
    SERVICE,
    compare,
    expected_service,
    handoff_key,
    metrics_key,
    service_doc,
)
from transforms.batch_files import HANDOFF_SCHEMA, JOURNEY_METRICS_SCHEMA
from transforms.journeys import journey_id_for

METRIC_COLUMNS = [f.name for f in JOURNEY_METRICS_SCHEMA]
HANDOFF_COLUMNS = [f.name for f in HANDOFF_SCHEMA]


def _select(columns: list[str]) -> str:
    """Landed column names for staged ones (``x_us`` -> epoch us of the landed ``x``)."""
    out = []
    for c in columns:
        if c.endswith("_us"):
            name = c[:-3] if c != "at_us" else "occurred_at"
            out.append(f"epoch_us({name}) AS {c}")
        else:
            out.append(c)
    return ", ".join(out)


def landed(db: Path, tbl: str, columns: list[str], prefix: str) -> list[dict[str, Any]]:
    rows = table(db, f"SELECT {_select(columns)} FROM {tbl} WHERE starts_with(customer_id, {sql_literal(prefix)})")
    return [dict(zip(columns, r)) for r in rows]


def test_service_scenarios_through_the_pipeline(broker, topics, db):
    docs = {s.name: service_doc(s) for s in SERVICE}
    cuts = {s.name: [cp["after_line"] for cp in docs[s.name].get("checkpoints", [])] + [len(s.lines)] for s in SERVICE}
    rounds = max(len(c) for c in cuts.values())
    batch_of_round: list[int] = []
    for index in range(rounds):
        batch = []
        for s in SERVICE:
            if index < len(cuts[s.name]):
                start = cuts[s.name][index - 1] if index else 0
                for line in s.lines[start: cuts[s.name][index]]:
                    doc = json.loads(line)
                    doc["customer_id"] = f"{s.name}/{doc['customer_id']}"
                    doc["event_id"] = f"{s.name}/{doc['event_id']}"
                    batch.append(doc)
        send_events(broker, topics, batch)
        landed_batches = run_once(db, broker, topics, service_metrics=CONFIG)
        assert len(landed_batches) == 1
        batch_of_round.append(landed_batches[0].batch_id)
        for s in SERVICE:
            prefix = f"{s.name}/"
            checkpoints = docs[s.name].get("checkpoints", [])
            part = checkpoints[index] if index < len(checkpoints) else docs[s.name]
            want_metrics, want_handoffs = expected_service(part, prefix)
            where = f"{s.name} after pipeline round {index + 1}"
            compare(landed(db, "journey_metrics", METRIC_COLUMNS, prefix), want_metrics, metrics_key, where)
            compare(landed(db, "journey_handoffs", HANDOFF_COLUMNS, prefix), want_handoffs, handoff_key, where)

    for s in SERVICE:
        prefix = f"{s.name}/"
        got = table(db, f"""SELECT batch_id, journey_id, change, replaced_by, reason, trigger_event_ids, trigger_events,
                                   late_events, changed_columns, before, after
                            FROM journey_revisions WHERE starts_with(customer_id, {sql_literal(prefix)})
                            ORDER BY batch_id, journey_id""")
        want = docs[s.name].get("revisions", [])
        assert len(got) == len(want), f"{s.name}: revisions {got} != expected {want}"
        for row, w in zip(got, want):
            batch_id, journey_id, change, replaced_by, reason, triggers, n_triggers, late, columns, before, after = row
            customer = prefix + w.get("customer_id", "c1")
            jid = lambda first: journey_id_for(customer, tuple(first.split(":", 1)))  # noqa: E731, B023 (called within this iteration)
            assert batch_id == batch_of_round[w["round"] - 1], s.name
            assert (journey_id, change, reason) == (jid(w["journey"]), w["change"], w["reason"]), s.name
            assert replaced_by == [jid(r) for r in w["replaced_by"]], s.name
            assert triggers == [prefix + e for e in w["trigger_event_ids"]], s.name
            assert (n_triggers, late) == (w["trigger_events"], w["late_events"]), s.name
            before, after = json.loads(before), json.loads(after)
            if w["changed_columns"] is not None:
                assert sorted(columns) == sorted(w["changed_columns"]), s.name
                assert sorted(before) == sorted(after) == sorted(columns), s.name
                assert all(before[c] != after[c] for c in columns), s.name
            else:  # removed: the whole old row is kept in `before`
                assert after == {} and "status" in before and sorted(before) == sorted(columns), s.name

    # the tables agree with each other, for every journey landed (not only the service scenarios)
    assert table(db, """SELECT count(*) FROM journeys j FULL JOIN journey_metrics m USING (journey_id)
                        WHERE j.journey_id IS NULL OR m.journey_id IS NULL""") == [(0,)]
    assert table(db, """SELECT count(*) FROM journeys j
                        LEFT JOIN (SELECT journey_id, count(*) AS n, count(*) FILTER (team_changed) AS t
                                   FROM journey_handoffs GROUP BY ALL) h USING (journey_id)
                        WHERE coalesce(h.n, 0) <> j.handoff_count OR coalesce(h.t, 0) <> j.team_handoff_count""") == [(0,)]
    assert table(db, """SELECT count(*) FROM journey_metrics m JOIN journeys j USING (journey_id)
                        WHERE bot_to_human_handoffs + human_to_bot_handoffs + bot_to_bot_handoffs
                              + team_to_team_handoffs + agent_to_agent_handoffs <> handoff_count""") == [(0,)]
    assert table(db, "SELECT count(*) FROM dead_letters") == [(0,)]


def _cli(db: Path, broker, topics: dict[str, str], *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pipelines.cli", "run", "--once", "--db", str(db), "--bootstrap-servers",
           broker.bootstrap_servers, "--topic-tickets", topics["tickets"], "--topic-chats", topics["chats"],
           "--topic-surveys", topics["surveys"], *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def test_cli_calendars_option(broker, topics, tmp_path):
    """A good --calendars file is used by `cxj run`; a bad one is one line and exit 4, nothing landed."""
    berlin = next(s for s in SERVICE if s.name.startswith("88_"))
    send_events(broker, topics, [json.loads(line) for line in berlin.lines])

    bad = tmp_path / "bad.toml"
    bad.write_text("[calendars.x]\ntimezone = 'Atlantis/Capital'\n")
    db = tmp_path / "cal.duckdb"
    result = _cli(db, broker, topics, "--calendars", str(bad))
    assert result.returncode == 4, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and str(bad) in errors[0] and "Atlantis/Capital" in errors[0], result.stderr
    assert not db.exists() or table(db, "SELECT count(*) FROM events") == [(0,)]

    missing = _cli(db, broker, topics, "--calendars", str(tmp_path / "missing.toml"))
    assert missing.returncode == 4 and "missing.toml" in missing.stderr

    result = _cli(db, broker, topics, "--calendars", str(CONFIG_FILE))
    assert result.returncode == 0, result.stderr
    assert table(db, "SELECT calendar, time_to_resolution_business_s FROM journey_metrics") == [("berlin", 90000.0)]

    default_db = tmp_path / "default.duckdb"
    assert _cli(default_db, broker, topics).returncode == 0
    # without a file, the built-in Mon-Fri 09:00-17:00 UTC: Friday 15:00-17:00Z; solved Monday 08:00Z,
    # before opening -> 7200
    assert table(default_db, "SELECT calendar, time_to_resolution_business_s FROM journey_metrics") == [("default", 7200.0)]

