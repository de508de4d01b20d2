"""`cxj run --repeat-window` other than the default, through the real pipeline (subprocess, broker,
Beam, DuckDB): the documented rule (docs/metrics.md, Journeys rule 2) with the window the
operator chose, boundary included.

One customer, five email tickets (each created, then solved):

    T1 09:00-10:00   T2 10:30-11:00   T3 12:00-12:30   T4 13:30:01-14:00   T5 created 14:00, solved 15:00

T2 starts 30 min after T1 ended, T3 exactly 1 h after T2 ended, T4 1 h + 1 s after T3 ended,
T5 at the very instant T4 is solved (a creation sorts before a status change at the same
instant, so T4 is still open when T5 starts). Expected journeys, worked out by hand from the rule
"join the latest journey if it has an open thread, or its last-ending thread ended at most the
window before (inclusive)":

    72h (default): [T1 T2 T3 T4 T5]
    1h:            [T1 T2 T3] [T4 T5]          (exactly 1 h is inside; 1 h + 1 s is not)
    0s:            [T1] [T2] [T3] [T4 T5]      (only an open thread joins)
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import send_events, table

CUSTOMER = "rw-c1"
TICKETS = {  # ticket -> (created, solved) on 2026-03-02, UTC
    "T1": ("09:00:00", "10:00:00"),
    "T2": ("10:30:00", "11:00:00"),
    "T3": ("12:00:00", "12:30:00"),
    "T4": ("13:30:01", "14:00:00"),
    "T5": ("14:00:00", "15:00:00"),
}
EXPECTED = {
    None: [["T1", "T2", "T3", "T4", "T5"]],
    "1h": [["T1", "T2", "T3"], ["T4", "T5"]],
    "0s": [["T1"], ["T2"], ["T3"], ["T4", "T5"]],
}


def doc_journey_id(customer_id: str, thread_type: str, thread_id: str) -> str:
    """docs/metrics.md: j_ + 10-byte BLAKE2b hex of customer U+001F type U+001F id (UTF-8)."""
    return "j_" + hashlib.blake2b(f"{customer_id}\x1f{thread_type}\x1f{thread_id}".encode(), digest_size=10).hexdigest()


def scenario() -> list[dict]:
    events = []
    for ticket, (created, solved) in TICKETS.items():
        base = {"customer_id": CUSTOMER, "schema_version": 1, "ticket_id": ticket}
        events.append({**base, "event_id": f"rw-{ticket}-c", "event_type": "ticket.created",
                       "occurred_at": f"2026-03-02T{created}Z", "channel": "email"})
        events.append({**base, "event_id": f"rw-{ticket}-s", "event_type": "ticket.status_changed",
                       "occurred_at": f"2026-03-02T{solved}Z", "status": "solved"})
    return events[::-1]  # arrival order must not matter


def seconds(hhmmss: str) -> int:
    h, m, s = map(int, hhmmss.split(":"))
    return h * 3600 + m * 60 + s


@pytest.fixture(scope="module")
def sent_topics(broker):
    from tests.support import new_topics

    topics = new_topics(broker)
    assert send_events(broker, topics, scenario()) == 10
    return topics


@pytest.mark.parametrize("window", list(EXPECTED), ids=lambda w: w or "default-72h")
def test_repeat_window_changes_journeys_through_the_real_pipeline(broker, sent_topics, tmp_path: Path, window):
    db = tmp_path / "rw.duckdb"
    cmd = [sys.executable, "-m", "pipelines.cli", "run", "--once", "--db", str(db), "--bootstrap-servers",
           broker.bootstrap_servers, "--topic-tickets", sent_topics["tickets"], "--topic-chats", sent_topics["chats"],
           "--topic-surveys", sent_topics["surveys"], *(["--repeat-window", window] if window else [])]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ, CXJ_REPLICA="off"))
    assert result.returncode == 0, result.stderr[-3000:]

    rows = table(db, "SELECT journey_id, threads, contact_count, status, time_to_resolution_s, fcr FROM journeys "
                     "ORDER BY started_at")
    groups = EXPECTED[window]
    expected = []
    for group in groups:
        start, end = seconds(TICKETS[group[0]][0]), seconds(TICKETS[group[-1]][1])
        expected.append((doc_journey_id(CUSTOMER, "ticket", group[0]), [f"ticket:{t}" for t in group], len(group),
                         "resolved", end - start, len(group) == 1))
    consumed = table(db, "SELECT coalesce(sum(consumed), 0) FROM pipeline_batches")[0][0]
    assert consumed == 10, f"run --once consumed {consumed} of 10 records sent before it started:\n{result.stderr[-2000:]}"
    assert rows == expected
    # every event is linked to exactly one journey
    assert table(db, "SELECT count(*), count(DISTINCT event_id) FROM journey_events") == [(10, 10)]
    assert table(db, "SELECT sum(consumed), sum(landed) FROM pipeline_batches") == [(10, 10)]


def test_an_invalid_repeat_window_is_refused_in_one_line(tmp_path: Path):
    cmd = [sys.executable, "-m", "pipelines.cli", "run", "--once", "--db", str(tmp_path / "x.duckdb"),
           "--repeat-window", "3 fortnights"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr  # argparse: a usage error
    assert "'3 fortnights' is not a duration like 72h, 90m, 3600s or 3d" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "x.duckdb").exists()
