"""The marts as a dbt project (sql/dbt_project.yml): `dbt build` (models + every data test),
`dbt source freshness` and `dbt docs generate` on demo data landed by the real pipeline, and
proof that dbt and the store build the SAME views from the same files.

dbt runs as a real subprocess with the project's profile; it attaches the landed database
read-only and builds into its own file, so these tests never write the pipeline's database.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from pipelines.storage.models import MODELS_DIR, SQL_DIR, load_models
from tests.analyst_data import analyst_db

DBT = Path(sys.executable).parent / "dbt"
VOLATILE = {"v_freshness"}  # computed from now(): differs between any two reads


@pytest.fixture(scope="module")
def demo_db(broker, tmp_path_factory) -> Path:
    return analyst_db(broker, tmp_path_factory)


def dbt_env(db: Path, work: Path) -> dict[str, str]:
    return {"CXJ_DB": str(db), "CXJ_DBT_PATH": str(work / "cxj_dbt.duckdb"), "DBT_LOG_PATH": str(work / "logs"),
            "DBT_SEND_ANONYMOUS_USAGE_STATS": "false", "DBT_USE_COLORS": "false"}


def dbt_args(work: Path) -> list[str]:
    return ["--project-dir", str(SQL_DIR), "--profiles-dir", str(SQL_DIR), "--target-path", str(work / "target")]


def dbt(command: list[str], db: Path, work: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """The `dbt` command line itself, as an analyst runs it."""
    return subprocess.run([str(DBT), *command, *dbt_args(work)], capture_output=True, text=True,
                          env={**os.environ, **dbt_env(db, work)}, cwd=work, timeout=timeout)


# One process runs the three commands (dbt's start-up costs seconds each time).
RUNNER = r"""
import json, sys
from dbt.cli.main import dbtRunner
common = sys.argv[1:]
runner = dbtRunner()
codes = {}
for name, command in (("build", ["build"]), ("freshness", ["source", "freshness"]),
                      ("docs", ["docs", "generate", "--no-compile"])):
    result = runner.invoke(command + common)
    codes[name] = bool(result.success)
print("CODES " + json.dumps(codes))
"""


@pytest.fixture(scope="module")
def built(demo_db, tmp_path_factory) -> Path:
    """`dbt build`, `dbt source freshness` and `dbt docs generate` once for the module; returns
    the work folder (target/, cxj_dbt.duckdb)."""
    work = tmp_path_factory.mktemp("dbt")
    env = {**os.environ, **dbt_env(demo_db, work)}
    done = subprocess.run([sys.executable, "-c", RUNNER, *dbt_args(work)], capture_output=True, text=True,
                          env=env, cwd=work, timeout=600)
    codes = json.loads(done.stdout.split("CODES ")[-1]) if "CODES " in done.stdout else {}
    assert codes == {"build": True, "freshness": True, "docs": True}, done.stdout[-4000:] + done.stderr[-2000:]
    return work


def test_dbt_build_runs_every_model_and_test(built):
    results = json.loads((built / "target" / "run_results.json").read_text())["results"]
    status = {r["unique_id"]: r["status"] for r in results}
    models = {u.split(".")[-1] for u in status if u.startswith("model.")}
    assert models == {m.name for m in load_models()}  # every model file is a dbt model
    assert all(s in ("success", "pass") for s in status.values()), {u: s for u, s in status.items() if s not in ("success", "pass")}
    tests = [u for u in status if u.startswith("test.")]
    kinds = {u.split(".")[2].split("_")[0] for u in tests}
    assert len(tests) >= 80
    for kind in ("unique", "not", "accepted", "relationships", "expression", "source", "assert"):
        assert kind in kinds, kinds  # unique, not_null, accepted_values, relationships, expression tests, singular


def test_dbt_and_the_store_build_the_same_views(built, demo_db):
    """One source of SQL: dbt's compiled views and the store's rendered views give the same rows."""
    con = duckdb.connect(str(built / "cxj_dbt.duckdb"), read_only=True)
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.execute(f"ATTACH '{demo_db}' AS landed (READ_ONLY)")
        for model in load_models():
            if model.name in VOLATILE:
                continue
            dbt_view, store_view = f"cxj_dbt.main.{model.name}", f"landed.main.{model.name}"
            counts = con.execute(f"SELECT (SELECT count(*) FROM {dbt_view}), (SELECT count(*) FROM {store_view})").fetchone()
            differ = con.execute(
                f"SELECT count(*) FROM ((FROM {dbt_view} EXCEPT ALL FROM {store_view}) UNION ALL "
                f"(FROM {store_view} EXCEPT ALL FROM {dbt_view}))").fetchone()[0]
            assert counts[0] == counts[1] and differ == 0, (model.name, counts, differ)
            assert counts[0] > 0 or model.name == "mart_handoff_pingpong", f"{model.name} is empty on the demo data"
    finally:
        con.close()


def test_source_freshness_and_docs(built, demo_db):
    sources = json.loads((built / "target" / "sources.json").read_text())["results"]
    assert {r["unique_id"].split(".")[-1]: r["status"] for r in sources} == {"events": "pass"}  # landed_at is fresh
    catalog = json.loads((built / "target" / "catalog.json").read_text())
    manifest = json.loads((built / "target" / "manifest.json").read_text())
    assert (built / "target" / "index.html").exists()
    kpis = catalog["nodes"]["model.cxj.mart_daily_kpis"]["columns"]
    assert kpis["fcr_rate"]["comment"].startswith("fcr_journeys / resolved_journeys")  # persist_docs wrote the YAML
    for node in manifest["nodes"].values():
        if node["resource_type"] == "model":
            assert node["description"] and all(c["description"] for c in node["columns"].values()), node["name"]


def test_a_broken_metric_rule_fails_the_build(demo_db, tmp_path):
    """The expression tests can fail: a journey marked first-contact-resolved while still open
    (and a batch whose records do not add up) make `dbt test` fail, naming the rules."""
    broken = tmp_path / "broken.duckdb"
    shutil.copy(demo_db, broken)
    with duckdb.connect(str(broken)) as con:
        con.execute("UPDATE journeys SET fcr = true WHERE journey_id = (SELECT min(journey_id) FROM journeys WHERE status = 'open')")
        con.execute("UPDATE pipeline_batches SET consumed = consumed + 1 WHERE batch_id = 1")
    done = dbt(["build", "--select", "stg_journeys", "source:cxj.pipeline_batches"], broken, tmp_path)
    assert done.returncode == 1
    failed = {r["unique_id"].split(".")[2] for r in json.loads((tmp_path / "target" / "run_results.json").read_text())["results"]
              if r["status"] == "fail"}
    assert any(name.startswith("expression_is_true_stg_journeys_NOT_fcr_OR") for name in failed), failed
    assert any(name.startswith("source_expression_is_true_cxj_pipeline_batches_consumed") for name in failed), failed


def test_the_profile_never_writes_the_landed_database(demo_db, built):
    """dbt attached the pipeline's file read-only: it holds no dbt view after a build."""
    with duckdb.connect(str(demo_db), read_only=True) as con:
        names = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
    assert names == {m.name for m in load_models()}
    assert (MODELS_DIR / "sources.yml").exists()
