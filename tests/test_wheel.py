"""The built wheel is all `cxj` needs: build it, install it into a fresh venv, run the pipeline.

Everything else in the suite runs the source checkout (an editable install), where a file read
from the tree (sql/schema.sql, the dbt models, the event schemas) is always there. Here the
wheel is built from a copy of the project's sources, installed into a new virtualenv, and the
installed `cxj` runs from a directory outside the checkout: start the local broker, simulate
customers (with duplicates and malformed messages), land them with `run --once`, query the
tables and a mart with `cxj sql`. The checkout is on no path of that venv, so a file the wheel
lacks fails the run.

The venv gets the project's dependencies the way `--system-site-packages` would: a .pth file
names this environment's site-packages (installing ~100 packages again takes minutes here and
proves nothing about our wheel). That .pth adds the directory only: the editable install's own
.pth hooks there are not run, so the checkout stays off the path (asserted below).
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from datetime import datetime
from pathlib import Path

import pytest

from pipelines.cli.simulate import DEFAULT_START
from pipelines.kafka.simulator import generate_customer_events, to_messages
from tests.oracle import all_journeys
from tests.support import free_port

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "README.md", "pipelines", "transforms", "schemas", "sql")
JUNK = shutil.ignore_patterns("__pycache__", "*.pyc", "target", "logs", "dbt_packages", ".user.yml")
CUSTOMERS, SEED, DUPLICATES, MALFORMED = 12, 5, 0.1, 0.05


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(map(str, cmd))} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from a copy of the sources (a stale build/ folder in the checkout cannot leak in)."""
    work = tmp_path_factory.mktemp("wheel-build")
    for name in SOURCES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, work / "src" / name, ignore=JUNK)
        else:
            (work / "src").mkdir(exist_ok=True)
            shutil.copy(source, work / "src" / name)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(work / "dist"), str(work / "src")],
        cwd=work, env=dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1"))
    (built,) = (work / "dist").glob("cx_journeys-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel installed (and this environment's dependencies visible)."""
    where = tmp_path_factory.mktemp("wheel-venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True, timeout=120)
    python = where / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    ours = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    (site / "_dependencies.pth").write_text("".join(f"{p}\n" for p in ours))
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "--quiet", str(wheel)],
        cwd=where, env=dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1"))
    return where


def clean_env(home: Path) -> dict[str, str]:
    """No PYTHONPATH, no CXJ_* settings, no config file of the caller's."""
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"} and not k.startswith("CXJ_")}
    return dict(env, HOME=str(home))


def test_the_wheel_holds_every_file_cxj_reads_at_run_time(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {"pipelines/sql/schema.sql", "pipelines/sql/dbt_project.yml", "pipelines/sql/models/sources.yml",
                "schemas/v1/envelope.json", "pipelines/cli/main.py", "pipelines/kafka/local_broker.py", "transforms/journeys.py"}
    assert expected <= names, sorted(expected - names)
    for folder, pattern in (("sql", "*.sql"), ("sql", "*.yml"), ("schemas/v1", "*.json")):
        for path in (ROOT / folder).rglob(pattern):
            inside = ("pipelines/" if folder == "sql" else "") + str(path.relative_to(ROOT))
            assert inside in names, f"{inside} is not in the wheel"
    for package in ("pipelines", "transforms", "schemas"):
        for module in (ROOT / package).rglob("*.py"):
            assert str(module.relative_to(ROOT)) in names, f"{module.relative_to(ROOT)} is not in the wheel"
    assert not any(n.startswith(("tests/", "infra/", "benchmarks/", "build/")) for n in names), sorted(names)


def test_the_installed_cxj_runs_the_pipeline_outside_the_checkout(venv, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = clean_env(tmp_path / "home")
    python, cxj = str(venv / "bin" / "python"), str(venv / "bin" / "cxj")

    # The checkout is on no path: our packages come from the venv, and the repo's tests package is not importable.
    probe = run([python, "-c", "import json, sys, pipelines, transforms, schemas\n"
                 "from pipelines.storage.models import SQL_DIR\n"
                 "try:\n    import tests\n    found = tests.__file__\nexcept ImportError:\n    found = None\n"
                 "print(json.dumps({'path': sys.path, 'files': [m.__file__ for m in (pipelines, transforms, schemas)],"
                 " 'sql': str(SQL_DIR), 'tests': found}))"], cwd=outside, env=env)
    seen = json.loads(probe.stdout)
    assert str(ROOT) not in seen["path"] and "" not in seen["path"][1:], seen["path"]
    assert all(f.startswith(str(venv)) for f in seen["files"] + [seen["sql"]]), seen
    assert seen["tests"] is None, seen["tests"]

    port = free_port()
    state, db = outside / "state", outside / "data" / "journeys.duckdb"
    kafka = ["--bootstrap-servers", f"127.0.0.1:{port}"]
    run([cxj, "broker", "start", "--port", str(port), "--state-dir", str(state)], cwd=outside, env=env, timeout=120)
    try:
        simulated = run([cxj, "simulate", "--customers", str(CUSTOMERS), "--seed", str(SEED), "--duplicates", str(DUPLICATES),
                         "--malformed", str(MALFORMED), *kafka], cwd=outside, env=env)
        sent = int(re.search(r"sent (\d+) messages", simulated.stderr).group(1))
        run([cxj, "run", "--once", "--db", str(db), *kafka], cwd=outside, env=env, timeout=600)
        query = ("SELECT (SELECT count(*) FROM events) AS events, (SELECT count(*) FROM dead_letters) AS dead_letters, "
                 "(SELECT sum(consumed) FROM pipeline_batches) AS consumed, (SELECT sum(landed) FROM pipeline_batches) AS landed, "
                 "(SELECT sum(duplicates) FROM pipeline_batches) AS duplicates, (SELECT count(*) FROM journeys) AS journeys, "
                 "(SELECT sum(journeys) FROM mart_daily_kpis) AS mart_journeys")
        out = run([cxj, "sql", "--db", str(db), "--format", "csv", query], cwd=outside, env=env)
        (row,) = list(csv.DictReader(io.StringIO(out.stdout)))
    finally:
        run([cxj, "broker", "stop", "--port", str(port), "--state-dir", str(state)], cwd=outside, env=env, timeout=120)

    # What the simulator sent, computed here from the same seed: every record accounted for.
    events = generate_customer_events(CUSTOMERS, SEED, datetime.fromisoformat(DEFAULT_START))
    messages = to_messages(events, SEED, 0.0, DUPLICATES, MALFORMED)
    duplicates, malformed = int(len(events) * DUPLICATES), int(len(events) * MALFORMED)
    assert sent == len(messages) == len(events) + duplicates + malformed
    expected_journeys = all_journeys(json.dumps(e, separators=(",", ":")) for e in events)
    got = {k: int(v) for k, v in row.items()}
    assert got == {"events": len(events), "dead_letters": malformed, "consumed": sent, "landed": len(events),
                   "duplicates": duplicates, "journeys": len(expected_journeys), "mart_journeys": len(expected_journeys)}, got
