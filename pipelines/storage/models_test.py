"""The SQL layer and the Python journey logic agree on the event types and their order.

The tie-break for events with equal occurred_at (docs/architecture.md, D10) has its one
definition in transforms/events.py (TYPE_RANK); the staging model stg_events computes the same
`type_rank` in SQL so the marts order events exactly as the pipeline does. These tests evaluate
the SQL expression in DuckDB for every event type and compare it with the Python ranks, so the
two cannot drift apart. No broker, no database file.
"""
from __future__ import annotations

import re

import duckdb
import yaml

from pipelines.storage.models import LAYER_ORDER, MODELS_DIR, SCHEMA_SQL, SQL_DIR, load_models
from schemas import event_types
from transforms.events import TYPE_RANK


def stg_events_select() -> str:
    (model,) = [m for m in load_models() if m.name == "stg_events"]
    return model.select


def sql_type_rank(event_types: list[str]) -> dict[str, int]:
    """stg_events' own CASE expression for type_rank, evaluated by DuckDB for each event type."""
    case = re.search(r"(CASE event_type.*?END) AS type_rank", stg_events_select(), flags=re.S)
    assert case, "stg_events no longer computes type_rank with CASE event_type ... END"
    rows = duckdb.sql(f"SELECT event_type, {case.group(1)} FROM (SELECT unnest($types) AS event_type)",
                      params={"types": event_types}).fetchall()
    return dict(rows)


def test_type_rank_in_sql_equals_the_python_order():
    assert sql_type_rank(sorted(TYPE_RANK)) == TYPE_RANK


def test_the_order_covers_exactly_the_contract_types():
    """Every event type the v1 schemas accept has a rank, and no rank names a type they refuse."""
    assert set(TYPE_RANK) == set(event_types(1))


def test_the_accepted_values_in_the_sources_docs_are_the_ranked_types():
    sources = yaml.safe_load((MODELS_DIR / "sources.yml").read_text())
    (events,) = [t for s in sources["sources"] for t in s["tables"] if t["name"] == "events"]
    (column,) = [c for c in events["columns"] if c["name"] == "event_type"]
    accepted = [t["accepted_values"]["arguments"]["values"] for t in column["data_tests"] if isinstance(t, dict)]
    assert [set(values) for values in accepted] == [set(TYPE_RANK)]


def test_a_type_added_to_python_only_would_be_caught():
    """The comparison is not vacuous: an unknown type falls into the SQL's ELSE rank, which a new
    Python rank between the existing ones would not equal."""
    ranks = sql_type_rank(["ticket.created", "ticket.escalated"])
    assert ranks["ticket.created"] == 0 and ranks["ticket.escalated"] == max(TYPE_RANK.values())


def test_the_sql_files_are_found_and_every_model_sits_in_a_known_layer():
    assert SCHEMA_SQL.is_file() and SCHEMA_SQL.parent == SQL_DIR and MODELS_DIR.is_dir()
    layers = {m.layer for m in load_models()}
    assert layers == set(LAYER_ORDER), layers
