"""Column comments: every column of every table and view carries its documentation, taken from
the dbt YAML files (one source), in the database file and — as far as DuckLake stores them — in
the read replica. Plus the model renderer's refusals (the store must never half-render a model).
"""
from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from pipelines.storage.models import LAYER_ORDER, MODELS_DIR, ModelError, load_docs, load_models, render
from pipelines.storage.reader import connect_replica
from pipelines.storage.replica import TABLES as REPLICA_TABLES
from pipelines.storage.store import Store

LANDING_TABLES = {"events", "journeys", "journey_events", "dead_letters", "pipeline_offsets", "pipeline_batches",
                  "source_fingerprints", "source_resets", "journey_metrics", "journey_handoffs", "journey_revisions",
                  "event_conflicts", "duplicate_deliveries", "batch_attempts", "event_replacements",
                  "event_id_digests", "customer_event_blocks", "customer_event_blocks_covered"}


@pytest.fixture(scope="module")
def database(tmp_path_factory) -> Path:
    db = tmp_path_factory.mktemp("comments") / "journeys.duckdb"
    Store(db).close()  # schema, views, comments, and the replica published
    return db


def columns(con: duckdb.DuckDBPyConnection) -> dict[tuple[str, str], str | None]:
    return {(t, c): comment for t, c, comment in con.execute(
        "SELECT table_name, column_name, comment FROM duckdb_columns() "
        "WHERE database_name = current_database() AND schema_name = 'main' AND NOT internal").fetchall()}


def test_every_column_of_every_table_and_view_has_its_yaml_description(database):
    docs = load_docs()
    with duckdb.connect(str(database), read_only=True) as con:
        found = columns(con)
        relations = dict(con.execute(
            "SELECT table_name, comment FROM duckdb_tables() WHERE database_name = current_database() AND NOT internal "
            "UNION ALL SELECT view_name, comment FROM duckdb_views() WHERE database_name = current_database() AND NOT internal"
        ).fetchall())
    names = {m.name for m in load_models()} | LANDING_TABLES
    assert set(relations) == names
    assert {t for t, _ in found} == names
    missing = sorted(f"{t}.{c}" for (t, c), comment in found.items() if not (comment or "").strip())
    assert missing == []
    assert {k: v for k, v in found.items()} == {k: docs.columns[k] for k in found}  # the YAML text exactly
    assert {r: c for r, c in relations.items()} == {r: docs.relations[r] for r in relations}
    # and no YAML describes a column that does not exist (docs can't go stale silently)
    assert sorted(set(docs.columns) - set(found)) == []


def test_the_replica_carries_the_comments_ducklake_can_hold(database):
    """DuckLake stores comments of tables, their columns and views, not of a view's columns."""
    docs = load_docs()
    con = connect_replica(database)
    try:
        found = {(t, c): comment for t, c, comment in con.execute(
            "SELECT table_name, column_name, comment FROM duckdb_columns() WHERE database_name = 'lake'").fetchall()}
        views = dict(con.execute("SELECT view_name, comment FROM duckdb_views() WHERE database_name = 'lake'").fetchall())
    finally:
        con.close()
    for table in REPLICA_TABLES:  # the landing tables the replica publishes
        table_columns = {k: v for k, v in found.items() if k[0] == table}
        assert table_columns and table_columns == {k: docs.columns[k] for k in table_columns}, table
    for model in load_models():
        assert views[model.name] == docs.relations[model.name]


def test_every_model_and_column_is_documented_in_yaml():
    docs = load_docs()
    for model in load_models():
        assert docs.relations.get(model.name), f"{model.name} has no description in a YAML file next to it"
    assert all(text for text in docs.columns.values())
    assert {p.name for p in MODELS_DIR.rglob("*.yml")} >= {"sources.yml", "_staging.yml", "_core.yml", "_marts.yml"}


def test_models_read_only_earlier_layers():
    """staging reads sources only; core reads staging/core; marts read core (no layer skips back up)."""
    order = LAYER_ORDER
    layer = {m.name: m.layer for m in load_models()}
    for model in load_models():
        if model.layer in ("staging", "ops"):
            assert not model.refs and model.sources, model.name
        else:
            assert not model.sources, f"{model.name} reads landing tables directly: ref() a staging model"
            assert all(order[layer[r]] <= order[model.layer] for r in model.refs), model.name


@pytest.mark.parametrize("text, error", [
    ("SELECT * FROM {{ ref('a') }} {% if true %}x{% endif %}", "only {{ ref('model') }}"),
    ("SELECT {{ var('x') }}", "only {{ ref('model') }}"),
    ("SELECT * FROM {{ source('other', 'events') }}", "unknown source 'other'"),
    ("SELECT 1; DROP TABLE events", "one statement"),
    ("{# a jinja comment #} SELECT 1", "only {{ ref('model') }}"),
])
def test_the_renderer_refuses_what_it_cannot_render(text, error):
    with pytest.raises(ModelError, match=error.replace("(", r"\(").replace(")", r"\)").replace("{", r"\{").replace("}", r"\}")):
        render(text, "x.sql")


def test_render_substitutes_refs_and_sources():
    sql, refs, sources = render("-- c;\nSELECT * FROM {{ ref('core_journeys') }} j JOIN {{source( \"cxj\" , 'events' )}} e ON ';' = ';';\n")
    assert sql == "-- c;\nSELECT * FROM core_journeys j JOIN events e ON ';' = ';'"
    assert refs == {"core_journeys"} and sources == {"events"}


def test_unknown_refs_and_cycles_are_refused(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "a.sql").write_text("SELECT * FROM {{ ref('b') }}")
    (tmp_path / "m" / "b.sql").write_text("SELECT * FROM {{ ref('a') }}")
    with pytest.raises(ModelError, match="cycle"):
        load_models(tmp_path)
    (tmp_path / "m" / "b.sql").write_text("SELECT * FROM {{ ref('nope') }}")
    with pytest.raises(ModelError, match="unknown model"):
        load_models(tmp_path)


def test_a_broken_model_or_yaml_stops_the_store_with_one_line(tmp_path, monkeypatch):
    """A typo in sql/models must not half-apply the views or end in a traceback."""
    import shutil

    import pipelines.storage.models as models
    from pipelines.storage.store import StoreError

    copy = tmp_path / "models"
    shutil.copytree(MODELS_DIR, copy)
    real = models.catalog_statements
    monkeypatch.setattr(models, "catalog_statements", lambda view_columns=True: real(copy, view_columns))
    (copy / "marts" / "_marts.yml").write_text("models:\n  - name: x\n    columns: [{description: no name}]\n")
    with pytest.raises(StoreError, match=r"_marts\.yml: not a valid dbt YAML file \(an entry without 'name'\)"):
        Store(tmp_path / "a.duckdb")
    (copy / "marts" / "_marts.yml").write_text("models: [unclosed\n")
    with pytest.raises(StoreError, match=r"_marts\.yml: not a valid dbt YAML file"):
        Store(tmp_path / "b.duckdb")
    shutil.copy(MODELS_DIR / "marts" / "_marts.yml", copy / "marts" / "_marts.yml")
    (copy / "marts" / "mart_bad.sql").write_text("SELECT * FROM {{ ref('core_jouneys') }}")
    with pytest.raises(StoreError, match=r"mart_bad\.sql: ref\(\) to unknown model\(s\) core_jouneys"):
        Store(tmp_path / "c.duckdb")
    (copy / "marts" / "mart_bad.sql").unlink()
    Store(tmp_path / "d.duckdb").close()  # and the fixed copy applies again
    with duckdb.connect(str(tmp_path / "c.duckdb"), read_only=True) as con:  # nothing was half-applied
        assert con.execute("SELECT count(*) FROM duckdb_views() WHERE NOT internal").fetchone()[0] == 0
