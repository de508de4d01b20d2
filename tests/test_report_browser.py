"""`cxj report` in a real headless browser (Debian's chromium, driven over the DevTools protocol
by playwright's Python client — no browser download): the page loads offline without console
errors, every chart renders a non-empty SVG, and a screenshot is kept as a test artefact.

The data is landed by the real pipeline (tests/analyst_data.py); hostile and empty databases
are written with `Store` directly.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import duckdb
import pytest

from pipelines.ops.report import Filters, collect
from pipelines.storage.store import Store
from tests.analyst_data import analyst_db

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("CXJ_TEST_ARTIFACTS", ROOT / "test-artifacts"))
CHARTS = 12
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]



@pytest.fixture(scope="module", autouse=True)
def chromium_installed() -> None:
    """A missing browser fails these tests (never a skip): `make test` installs it first."""
    assert CHROMIUM.exists(), "no /usr/bin/chromium: run `bash infra/install-chromium.sh` (make test does)"


@pytest.fixture(scope="module")
def demo_db(broker, tmp_path_factory) -> Path:
    return analyst_db(broker, tmp_path_factory)


def cxj_report(db: Path, out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.cli", "report", "--db", str(db), "-o", str(out), *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=180)


class Browser:
    """Headless chromium with every network request refused and recorded."""

    def __init__(self) -> None:
        from playwright.sync_api import sync_playwright

        self._manager = sync_playwright()
        playwright = self._manager.__enter__()
        self._profile = tempfile.mkdtemp(prefix="cxj-chromium-")  # a new, empty profile every time
        self.context = playwright.chromium.launch_persistent_context(
            self._profile, executable_path=str(CHROMIUM), headless=True, args=FLAGS,
            viewport={"width": 1280, "height": 900})
        self.blocked: list[str] = []
        self.context.route(re.compile(r"^(?!file:).*"), self._refuse)

    def _refuse(self, route: Any) -> None:
        self.blocked.append(route.request.url)
        route.abort()

    def open(self, page_file: Path) -> tuple[Any, list[str]]:
        """(page, problems): console errors/warnings, page errors and dialogs seen while loading."""
        page = self.context.new_page()
        problems: list[str] = []
        page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.on("dialog", lambda d: (problems.append(f"dialog: {d.message}"), d.dismiss()))
        page.goto(page_file.as_uri())
        page.wait_for_selector("body[data-charts-done='1']", timeout=60_000)
        return page, problems

    def close(self) -> None:
        self.context.close()
        self._manager.__exit__(None, None, None)
        shutil.rmtree(self._profile, ignore_errors=True)


@pytest.fixture(scope="module")
def browser() -> Any:
    session = Browser()
    try:
        yield session
    finally:
        session.close()


def chart_state(page: Any) -> list[dict[str, Any]]:
    return page.evaluate("""Array.from(document.querySelectorAll('.chart')).map(el => {
        const svg = el.querySelector('svg');
        return {id: el.id, title: el.dataset.title, rendered: el.dataset.rendered === '1',
                failed: el.classList.contains('failed'),
                marks: svg ? svg.querySelectorAll('path, rect, line, text').length : 0,
                width: svg ? svg.getBoundingClientRect().width : 0,
                height: svg ? svg.getBoundingClientRect().height : 0};
    })""")


def test_report_renders_every_chart_offline_without_errors(demo_db, browser, tmp_path):
    page_file = tmp_path / "report.html"
    done = cxj_report(demo_db, page_file)
    assert done.returncode == 0, done.stderr
    text = page_file.read_text(encoding="utf-8")
    # self-contained: no script, stylesheet or image is loaded from anywhere
    assert not re.search(r"""<(script|link|img|iframe)[^>]+(src|href)\s*=\s*["']?(https?:)?//""", text, re.I)
    assert "vegaEmbed" in text and text.count('class="chart"') == CHARTS
    page, problems = browser.open(page_file)
    try:
        charts = chart_state(page)
        assert problems == []
        assert browser.blocked == []  # nothing tried the network
        assert len(charts) == CHARTS
        empty = [c["title"] for c in charts if not c["rendered"] or c["failed"] or c["marks"] < 5 or c["width"] < 100]
        assert empty == [], charts
        tiles = page.evaluate("Object.fromEntries(Array.from(document.querySelectorAll('.tile')).map("
                              "t => [t.querySelector('.k').textContent, t.querySelector('.v').textContent]))")
        with duckdb.connect(str(demo_db), read_only=True) as con:
            journeys, open_now = con.execute("SELECT count(*), count(*) FILTER (WHERE is_open) FROM core_journeys").fetchone()
        assert tiles["journeys"] == f"{journeys:,}" and tiles["open"] == f"{open_now:,}"
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / "report.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 50_000
    finally:
        page.close()


def test_filters_select_the_same_journeys_as_sql(demo_db):
    """The date/channel/team options pick exactly the journeys an analyst's SQL would."""
    with duckdb.connect(str(demo_db), read_only=True) as con:
        con.execute("SET TimeZone = 'UTC'")
        latest, channel, team = con.execute(
            "SELECT (SELECT max(started_date) FROM core_journeys), "
            "(SELECT entry_channel FROM core_journeys GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1), "
            "(SELECT team FROM core_journeys GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1)").fetchone()
        cases = [
            (Filters(), "true"),
            (Filters(channels=[channel]), f"entry_channel = '{channel}'"),
            (Filters(teams=[team], channels=[channel, "no-such-channel"]), f"team = '{team}' AND entry_channel = '{channel}'"),
            (Filters(last_days=10), f"started_date > DATE '{latest}' - 10"),
            (Filters(since=latest, until=latest), f"started_date = DATE '{latest}'"),
            (Filters(channels=["no-such-channel"]), "false"),
        ]
        for filters, condition in cases:
            data = collect(con, filters.resolve(con))
            expected = con.execute(f"""SELECT count(*), count(*) FILTER (WHERE is_open),
                                              count(*) FILTER (WHERE status = 'resolved')
                                       FROM core_journeys WHERE {condition}""").fetchone()
            got = (data["kpis"]["journeys"], sum(r["open_journeys"] for r in data["backlog"]), data["kpis"]["resolved"])
            assert got == expected, (filters, got, expected)
            assert sum(r["journeys"] for r in data["by_channel"]) == expected[0]
            assert sum(r["journeys"] for r in data["ttr"]) == expected[2]


HOSTILE = """
INSERT INTO journeys VALUES
 ('j1', 'c1', 'resolved', TIMESTAMPTZ '2025-03-03 09:00:00+00', TIMESTAMPTZ '2025-03-03 11:00:00+00',
  TIMESTAMPTZ '2025-03-03 11:00:00+00', now(), 7200, 600, 0, 0, 0, 1, 1, 0, 5, NULL, true,
  ['</script><script>alert(1)</script>'], ['a1'], ['<img src=x onerror=alert(2)>'], ['ticket:t1'], 3, 1),
 ('j2', 'c2', 'open', TIMESTAMPTZ '2025-03-03 10:00:00+00', NULL,
  TIMESTAMPTZ '2025-03-03 10:30:00+00', now(), NULL, NULL, 1, 1, 1, 2, 1, 0, NULL, NULL, false,
  ['"quoted" & ü 日本'], ['a2'], ['team\\u2028x'], ['chat:ch2'], 4, 1);
INSERT INTO events (event_id, event_type, occurred_at, customer_id, ticket_id, channel, payload, source_topic,
                    source_partition, source_offset, batch_id, landed_at)
VALUES ('e1', 'ticket.created', TIMESTAMPTZ '2025-03-03 09:00:00+00', 'c1', 't1', '</script><script>alert(1)</script>',
        '{}', 't', 0, 0, 1, now());
INSERT INTO journey_events VALUES ('e1', 'j1', 'c1', 1);
INSERT INTO dead_letters VALUES ('t', 0, 1, NULL, 'x'::BLOB, '<b>bad</b>', 'd', 1, now());
"""


@pytest.mark.parametrize("rows", [HOSTILE, ""], ids=["hostile-values", "empty-database"])
def test_hostile_or_empty_data_still_renders_safely(tmp_path, monkeypatch, browser, rows):
    db = tmp_path / "journeys.duckdb"
    monkeypatch.setenv("CXJ_REPLICA", "0")
    with Store(db) as store:
        if rows:
            store.con.execute(rows)
    page_file = tmp_path / "report.html"
    done = cxj_report(db, page_file)
    assert done.returncode == 0, done.stderr
    page, problems = browser.open(page_file)
    try:
        assert problems == []  # no alert() ran, no error
        charts = chart_state(page)
        assert len(charts) == CHARTS and all(c["rendered"] and not c["failed"] for c in charts), charts
        if rows:
            body = page.inner_text("body")
            assert "</script><script>alert(1)</script>" in body or "alert(1)" in page.content()
            assert page.evaluate("document.querySelectorAll('script').length") == 3  # bundle, specs, loader
    finally:
        page.close()


def test_report_errors_are_one_line(tmp_path, demo_db):
    done = cxj_report(tmp_path / "missing.duckdb", tmp_path / "r.html")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and "does not exist" in done.stderr
    done = cxj_report(demo_db, tmp_path / "no" / "dir" / "r.html")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and "cannot write" in done.stderr
    done = cxj_report(demo_db, tmp_path / "r.html", "--from", "yesterday")
    assert done.returncode != 0 and "not a date" in done.stderr


WRITER = """
import sys
from pipelines.storage.store import Store
store = Store(sys.argv[1])          # holds the file, as a running pipeline does, and publishes the replica
print("ready", flush=True)
sys.stdin.read()
store.close()
"""


def test_report_reads_the_replica_while_the_pipeline_holds_the_database(tmp_path, monkeypatch):
    db = tmp_path / "journeys.duckdb"
    monkeypatch.setenv("CXJ_REPLICA", "0")
    with Store(db) as store:
        store.con.execute(HOSTILE)
    monkeypatch.delenv("CXJ_REPLICA")
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(db)], cwd=ROOT, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert writer.stdout.readline().strip() == "ready", writer.stderr.read()
        page_file = tmp_path / "live.html"
        done = cxj_report(db, page_file)
        assert done.returncode == 0, done.stderr
        text = page_file.read_text(encoding="utf-8")
        assert "live read replica" in text and '<div class="v">2</div><div class="k">journeys</div>' in text
    finally:
        writer.stdin.close()
        writer.wait(timeout=30)
