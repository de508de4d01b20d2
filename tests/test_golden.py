"""Golden scenarios: hand-derived journey rows for small event streams (tests/golden/).

Each scenario is ``NN_name.jsonl`` (contract v1 events, one per line, in arrival order) and
``NN_name.expected.json`` (the journey rows worked out by hand from the rules in
docs/metrics.md, with the derivation). See tests/golden/README.md for the format.

Every scenario runs twice:
- through the pure functions (each line parsed by transforms.parse, then
  transforms.journeys.assemble_journeys per customer), and
- through the real pipeline (real broker, real Beam, real DuckDB): all scenarios in one
  topic set, their customer and event ids prefixed with the scenario name so they cannot
  interact; scenarios with checkpoints are sent in rounds with a pipeline run after each,
  so late data and in-place updates are checked against landed rows.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Optional

import pytest

from pipelines.storage.quoting import sql_literal
from tests.support import JOURNEY_COLUMNS, run_once, send_events, table
from transforms.events import STREAM_OF_TYPE, Event
from transforms.journeys import assemble_journeys
from transforms.parse import SourceRef, parse_record

GOLDEN = Path(__file__).resolve().parent / "golden"
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
TIMESTAMPS = ("started_at", "resolved_at", "last_event_at")


@dataclass
class Scenario:
    name: str
    lines: list[str]
    description: str
    checkpoints: list[dict[str, Any]]
    journeys: list[dict[str, Any]]

    @property
    def cuts(self) -> list[int]:
        """Line counts after which the expected rows are known: each checkpoint, then the end."""
        return [cp["after_line"] for cp in self.checkpoints] + [len(self.lines)]

    def expected_after(self, round_index: int) -> list[dict[str, Any]]:
        if round_index < len(self.checkpoints):
            return self.checkpoints[round_index]["journeys"]
        return self.journeys


def load_scenarios() -> list[Scenario]:
    scenarios = []
    for expected_file in sorted(GOLDEN.glob("*.expected.json")):
        name = expected_file.name[: -len(".expected.json")]
        doc = json.loads(expected_file.read_text())
        lines = [line for line in (GOLDEN / f"{name}.jsonl").read_text().splitlines() if line.strip()]
        scenarios.append(Scenario(name, lines, doc["description"], doc.get("checkpoints", []), doc["journeys"]))
    return scenarios


SCENARIOS = load_scenarios()


# ---------------------------------------------------------------------------------- normal form


def doc_journey_id(customer_id: str, thread_type: str, thread_id: str) -> str:
    """journey_id as docs/metrics.md defines it, written here from the doc, not imported: `j_` +
    the hex of BLAKE2b with a 10-byte digest of UTF-8 `customer_id`, U+001F, thread type,
    U+001F, thread id. The golden rows' ids come from here, so the code's formula is checked."""
    data = f"{customer_id}\x1f{thread_type}\x1f{thread_id}".encode("utf-8")
    return "j_" + hashlib.blake2b(data, digest_size=10).hexdigest()


def _us(value: Any) -> Optional[int]:
    """A timestamp (expected RFC 3339 text, a landed aware datetime, epoch us or None) -> epoch
    microseconds. Expected texts are read with the standard library, not the parser under test."""
    if value is None or isinstance(value, int):
        return value
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
        assert value.tzinfo is not None, "expected timestamps carry an offset"
    return (value - EPOCH) // timedelta(microseconds=1)


def expected_row(row: dict[str, Any], customer_prefix: str = "") -> dict[str, Any]:
    customer = customer_prefix + row["customer_id"]
    kind, thread_id = row["threads"][0].split(":", 1)
    out = {k: v for k, v in row.items() if k != "event_ids"}
    out["customer_id"] = customer
    out["journey_id"] = doc_journey_id(customer, kind, thread_id)
    for name in TIMESTAMPS:
        out[name] = _us(row[name])
    return out


def pure_row(row: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in row.items() if k != "event_ids" and not k.endswith("_us")}
    for name in TIMESTAMPS:
        out[name] = row[f"{name}_us"]
    return out


def db_rows(db: Path, customer_prefix: str) -> list[dict[str, Any]]:
    names = [c.strip() for c in JOURNEY_COLUMNS.split(",")]
    rows = table(db, f"SELECT {JOURNEY_COLUMNS} FROM journeys WHERE starts_with(customer_id, {sql_literal(customer_prefix)})")
    out = []
    for values in rows:
        row = dict(zip(names, values))
        for name in TIMESTAMPS:
            row[name] = _us(row[name])
        out.append(row)
    return out


def by_id(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    indexed = {r["journey_id"]: r for r in rows}
    assert len(indexed) == len(rows), "a journey_id appears twice"
    return indexed


# ---------------------------------------------------------------------------------- pure


def parse_lines(lines: list[str]) -> list[Event]:
    """Each line through the real parser (a golden line that does not parse is a broken scenario)."""
    events = []
    now_us = int(time.time() * 1_000_000)
    for number, line in enumerate(lines, 1):
        doc = json.loads(line)
        kind, row = parse_record(
            line.encode(), SourceRef("golden", 0, number), STREAM_OF_TYPE[doc["event_type"]], now_us
        )
        assert kind == "event", f"line {number}: {row['reason']}: {row['detail']}"
        events.append(Event.from_row(row))
    return events


def assemble_all(events: list[Event]) -> list[dict[str, Any]]:
    customers = list(dict.fromkeys(e.customer_id for e in events))
    return [row for c in customers for row in assemble_journeys(c, events)]


def check(actual_rows: list[dict[str, Any]], expected: list[dict[str, Any]], where: str,
          event_links: Optional[dict[str, list[str]]] = None, event_prefix: str = "", customer_prefix: str = "") -> None:
    actual = by_id(actual_rows)
    wanted = by_id([expected_row(r, customer_prefix) for r in expected])
    assert sorted(actual) == sorted(wanted), (
        f"{where}: journeys {[a['threads'] for a in actual.values()]} != expected {[w['threads'] for w in wanted.values()]}"
    )
    for journey_id, want in wanted.items():
        got = actual[journey_id]
        assert set(got) == set(want), f"{where}: columns {sorted(set(got) ^ set(want))} missing on one side"
        diff = {k: (got.get(k), v) for k, v in want.items() if got.get(k) != v}
        assert not diff, f"{where}: journey {want['threads']}: (actual, expected) differ: {diff}"
    if event_links is not None:
        for raw in expected:
            if "event_ids" in raw:
                journey_id = expected_row(raw, customer_prefix)["journey_id"]
                assert sorted(event_links.get(journey_id, [])) == sorted(event_prefix + e for e in raw["event_ids"]), where


# Worked out by hand from the formula in docs/metrics.md (hashlib in a REPL, not the code):
# (customer_id, thread type, thread id) -> journey_id. A change of the formula changes every
# landed id, which breaks analysts' saved queries and links: it must show up here.
PINNED_JOURNEY_IDS = {
    ("c1", "ticket", "T1"): "j_e3d471551310168681a4",
    ("c1", "chat", "C1"): "j_294c149977dff4c9ab20",
    ("cust-42", "ticket", "T-9"): "j_edcc87c8165f59fb5260",
    ("\u00fc/\u00df", "chat", "C\u00e9"): "j_cd87a5641baee908f1a4",  # non-ASCII: hashed as UTF-8
}


@pytest.mark.parametrize("key", PINNED_JOURNEY_IDS, ids=[":".join(k) for k in PINNED_JOURNEY_IDS])
def test_journey_id_formula_is_pinned(key: tuple[str, str, str]) -> None:
    """The assembled journey of a one-thread customer carries the hand-computed id, and the
    test's own implementation of the documented formula agrees with it."""
    customer, kind, thread_id = key
    start = {"ticket": {"event_type": "ticket.created", "ticket_id": thread_id, "channel": "email"},
             "chat": {"event_type": "chat.started", "chat_id": thread_id, "channel": "chat"}}[kind]
    line = json.dumps({"event_id": "pin-1", "customer_id": customer, "schema_version": 1,
                       "occurred_at": "2026-03-02T09:00:00Z", **start})
    rows = assemble_all(parse_lines([line]))
    assert [r["journey_id"] for r in rows] == [PINNED_JOURNEY_IDS[key]]
    assert doc_journey_id(*key) == PINNED_JOURNEY_IDS[key]


def test_there_are_enough_scenarios():
    assert len(SCENARIOS) >= 40


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_golden_pure(scenario: Scenario) -> None:
    events = parse_lines(scenario.lines)
    for index, cut in enumerate(scenario.cuts):
        rows = assemble_all(events[:cut])
        links = {r["journey_id"]: r["event_ids"] for r in rows}
        check([pure_row(r) for r in rows], scenario.expected_after(index), f"{scenario.name} after line {cut}", links)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_golden_arrival_order_is_irrelevant(scenario: Scenario) -> None:
    """The final rows do not depend on the order of the lines (reversed, rotated)."""
    events = parse_lines(scenario.lines)
    expected = [pure_row(r) for r in assemble_all(events)]
    for reordered in (events[::-1], events[len(events) // 2:] + events[: len(events) // 2]):
        # a conflicting duplicate is decided by delivery order, so keep first copies first
        first = {}
        for e in events:
            first.setdefault(e.event_id, e)
        reordered = [first[e.event_id] for e in reordered]
        assert sorted(map(json.dumps, [pure_row(r) for r in assemble_all(reordered)]), key=str) == sorted(
            map(json.dumps, expected), key=str
        )


# ---------------------------------------------------------------------------------- real pipeline


def test_golden_through_the_pipeline(broker, topics, db):
    rounds = max(len(s.cuts) for s in SCENARIOS)
    for index in range(rounds):
        batch = []
        for s in SCENARIOS:
            if index < len(s.cuts):
                start = s.cuts[index - 1] if index else 0
                for line in s.lines[start: s.cuts[index]]:
                    doc = json.loads(line)
                    doc["customer_id"] = f"{s.name}/{doc['customer_id']}"
                    doc["event_id"] = f"{s.name}/{doc['event_id']}"
                    batch.append(doc)
        send_events(broker, topics, batch)
        run_once(db, broker, topics)
        links: dict[str, list[str]] = {}
        for event_id, journey_id in table(db, "SELECT event_id, journey_id FROM journey_events"):
            links.setdefault(journey_id, []).append(event_id)
        for s in SCENARIOS:
            prefix = f"{s.name}/"
            where = f"{s.name} after pipeline round {index + 1}"
            check(db_rows(db, prefix), s.expected_after(min(index, len(s.cuts) - 1)), where, links, prefix, prefix)
        assert table(db, "SELECT count(*) - count(DISTINCT journey_id) FROM journeys") == [(0,)]
        assert table(db, "SELECT count(*) - count(DISTINCT event_id) FROM journey_events") == [(0,)]
        assert table(db, "SELECT count(*) FROM journey_events WHERE journey_id NOT IN (SELECT journey_id FROM journeys)") == [(0,)]
    assert table(db, "SELECT count(*) FROM dead_letters") == [(0,)]


def test_docs_cite_only_existing_scenarios():
    """docs/metrics.md cites scenarios in brackets ([`name`], [`a`, `b`: ...]); each must exist,
    and at least 40 scenarios are cited."""
    import re

    text = (Path(__file__).resolve().parent.parent / "docs" / "metrics.md").read_text()
    cited = {re.sub(r"^\d\d_", "", token)
             for group in re.findall(r"\[`[^\]]*\]", text, flags=re.S)
             for token in re.findall(r"`([^`]+)`", group)}
    names = {s.name.split("_", 1)[1] for s in SCENARIOS}
    assert cited - names == set(), f"docs cite unknown scenarios: {sorted(cited - names)}"
    assert len(cited) >= 40, sorted(names - cited)
