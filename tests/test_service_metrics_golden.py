"""Golden scenarios of the service metrics (63 and up): journey_metrics and journey_handoffs rows
worked out by hand from docs/metrics.md, "Service metrics", checked through the pure functions.

A scenario's ``*.expected.json`` has, beside the journeys rows that tests/test_golden.py checks,
``service_metrics`` (one full journey_metrics row per journey, ``journey`` naming its first
thread) and ``handoffs`` (every journey_handoffs row); checkpoints may carry both too. All use the
settings in tests/golden/service_metrics.toml. tests/test_new_metrics_pipeline.py checks the same
rows, and the revisions, through the real pipeline.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Optional

import pytest

from tests.test_golden import SCENARIOS, Scenario, _us, parse_lines
from transforms.journeys import journey_id_for
from transforms.metrics_config import load_metrics_config
from transforms.service_metrics import assemble_customer

GOLDEN = Path(__file__).resolve().parent / "golden"
CONFIG_FILE = GOLDEN / "service_metrics.toml"
CONFIG = load_metrics_config(CONFIG_FILE)
SERVICE = [s for s in SCENARIOS if "service_metrics" in json.loads((GOLDEN / f"{s.name}.expected.json").read_text())]
METRIC_TIMES = ("first_resolved_at", "durable_check_at", "bot_handoff_at")


def service_doc(scenario: Scenario) -> dict[str, Any]:
    return json.loads((GOLDEN / f"{scenario.name}.expected.json").read_text())


def expected_service(doc: dict[str, Any], prefix: str = "") -> tuple[list[dict], list[dict]]:
    """(journey_metrics rows, journey_handoffs rows) in the form the pure functions return."""
    metrics, handoffs = [], []
    for row in doc["service_metrics"]:
        out = {k: v for k, v in row.items() if k != "journey"}
        out["customer_id"] = prefix + row["customer_id"]
        out["journey_id"] = journey_id_for(out["customer_id"], tuple(row["journey"].split(":", 1)))
        for name in METRIC_TIMES:
            out[f"{name}_us"] = _us(out.pop(name))
        metrics.append(out)
    for row in doc["handoffs"]:
        out = {k: v for k, v in row.items() if k not in ("journey", "at")}
        customer = prefix + row.get("customer_id", "c1")
        out["customer_id"] = customer
        out["journey_id"] = journey_id_for(customer, tuple(row["journey"].split(":", 1)))
        out["event_id"] = prefix + row["event_id"]
        out["at_us"] = _us(row["at"])
        handoffs.append(out)
    return metrics, handoffs


def assemble_service(events, config=CONFIG) -> tuple[list[dict], list[dict]]:
    customers = list(dict.fromkeys(e.customer_id for e in events))
    metrics, handoffs = [], []
    for customer in customers:
        _, m, h = assemble_customer(customer, events, config=config)
        metrics += m
        handoffs += h
    return metrics, handoffs


def compare(actual: list[dict], expected: list[dict], key, where: str) -> None:
    got = {key(r): r for r in actual}
    want = {key(r): r for r in expected}
    assert sorted(got) == sorted(want), f"{where}: rows {sorted(got)} != expected {sorted(want)}"
    for k, w in want.items():
        g = got[k]
        assert set(g) == set(w), f"{where} {k}: columns {sorted(set(g) ^ set(w))} missing on one side"
        diff = {c: (g[c], v) for c, v in w.items() if g[c] != v}
        assert not diff, f"{where} {k}: (actual, expected) differ: {diff}"


def metrics_key(r):
    return r["journey_id"]


def handoff_key(r):
    return (r["journey_id"], r["seq"])


def stages(scenario: Scenario, doc: dict[str, Any]) -> list[tuple[int, Optional[dict]]]:
    """(line count, checkpoint doc or None for the final rows)."""
    return [(cp["after_line"], cp) for cp in doc.get("checkpoints", [])] + [(len(scenario.lines), None)]


def test_there_are_at_least_30_service_scenarios():
    assert len(SERVICE) >= 30


@pytest.mark.parametrize("scenario", SERVICE, ids=[s.name for s in SERVICE])
def test_service_golden_pure(scenario: Scenario) -> None:
    doc = service_doc(scenario)
    events = parse_lines(scenario.lines)
    for cut, checkpoint in stages(scenario, doc):
        part = checkpoint if checkpoint is not None else doc
        want_metrics, want_handoffs = expected_service(part)
        metrics, handoffs = assemble_service(events[:cut])
        where = f"{scenario.name} after line {cut}"
        compare(metrics, want_metrics, metrics_key, where)
        compare(handoffs, want_handoffs, handoff_key, where)


@pytest.mark.parametrize("scenario", SERVICE, ids=[s.name for s in SERVICE])
def test_service_golden_arrival_order_is_irrelevant(scenario: Scenario) -> None:
    events = parse_lines(scenario.lines)
    want_metrics, want_handoffs = expected_service(service_doc(scenario))
    rng = random.Random(scenario.name)
    for _ in range(3):
        shuffled = list(events)
        rng.shuffle(shuffled)
        metrics, handoffs = assemble_service(shuffled)
        compare(metrics, want_metrics, metrics_key, f"{scenario.name} shuffled")
        compare(handoffs, want_handoffs, handoff_key, f"{scenario.name} shuffled")
