"""Analysts read while the pipeline writes (issue 6, docs/storage.md).

A real `cxj run --follow` process lands small batches while a producer keeps sending events
and a separate reader process queries the tables and marts in a loop through
`pipelines.storage.reader` (which, while the pipeline holds the database file, attaches the DuckLake
read replica the pipeline publishes after every batch). The reader must never fail, must
only ever see whole batches, and the number of landed events it sees must never decrease.
After SIGTERM the database file itself shows the same tables and marts.
"""
from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import duckdb
import pytest

from pipelines.storage.reader import ReplicaNotReady, connect, connect_replica, open_reader, query
from pipelines.storage.replica import TABLES, catalog_path
from tests.support import send_events

ROOT = Path(__file__).resolve().parent.parent
CHANNELS = ["email", "web", "phone", "chat", "messaging"]
MIN_BATCHES = 20
CUSTOMERS = 23  # 8 events each: 184 events in batches of at most 9 -> at least 21 batches
MAX_BATCH = 9

# The reader process: every iteration opens a connection the way an analyst would
# (`pipelines.storage.reader.query`, fresh each time) and also uses one long-lived connection.
READER = r"""
import json, sys, time
from pipelines.storage.reader import connect, query
db, stop = sys.argv[1], sys.argv[2]
import os
CHECK = '''
SELECT (SELECT count(*) FROM events) AS events,
       (SELECT coalesce(sum(landed), 0) FROM pipeline_batches) AS landed,
       (SELECT coalesce(max(batch_id), 0) FROM pipeline_batches) AS batch,
       (SELECT count(*) FROM journey_events) AS linked,
       (SELECT coalesce(sum(event_count), 0) FROM journeys) AS in_journeys,
       (SELECT coalesce(sum(journeys), 0) FROM mart_daily_kpis) AS kpi_journeys,
       (SELECT count(*) FROM journeys) AS journeys,
       (SELECT coalesce(sum(journeys), 0) FROM mart_channel_paths) AS path_journeys,
       (SELECT count(*) FROM mart_handoff_pingpong) AS pingpong,
       (SELECT coalesce(sum(open_journeys), 0) FROM mart_open_backlog) AS backlog,
       (SELECT count(*) FROM journeys WHERE status = 'open') AS open_journeys,
       (SELECT coalesce(sum(journeys), 0) FROM mart_csat_by_friction) AS csat_journeys
'''
long_lived = connect(db)
i = 0
while not os.path.exists(stop):
    i += 1
    t0 = time.perf_counter()
    try:
        if i % 2:
            row = query(CHECK, db).row(0, named=True)
        else:
            cur = long_lived.execute(CHECK)
            row = dict(zip([d[0] for d in cur.description], cur.fetchone()))
        row["wait_s"] = time.perf_counter() - t0
        row["fresh"] = bool(i % 2)
        print(json.dumps(row, default=int), flush=True)  # sums are HUGEINT -> Decimal
    except Exception as exc:
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
    time.sleep(0.2)
"""


def customer_events(n: int) -> list[list[dict[str, Any]]]:
    """Events of customer n in four steps sent at different times (journeys span batches)."""
    c, t = f"rc{n}", f"rt{n}"
    day = 1 + n % 20
    at = lambda minute: f"2025-04-{day:02d}T{8 + minute // 60:02d}:{minute % 60:02d}:00Z"  # noqa: E731
    base = {"customer_id": c, "schema_version": 1}
    channel = CHANNELS[n % len(CHANNELS)]
    steps = [
        [{"event_id": f"{c}-1", "event_type": "ticket.created", "occurred_at": at(0), "ticket_id": t, "channel": channel},
         {"event_id": f"{c}-2", "event_type": "ticket.assigned", "occurred_at": at(1), "ticket_id": t,
          "handler_type": "agent", "agent_id": f"a{n % 3}", "team": "support"}],
        [{"event_id": f"{c}-3", "event_type": "ticket.message", "occurred_at": at(5), "ticket_id": t,
          "author": "customer", "channel": CHANNELS[(n + n % 2) % len(CHANNELS)]},
         {"event_id": f"{c}-4", "event_type": "ticket.assigned", "occurred_at": at(10), "ticket_id": t,
          "handler_type": "agent", "agent_id": f"a{(n + 1) % 3}", "team": "billing" if n % 2 else "support"}],
        [{"event_id": f"{c}-5", "event_type": "ticket.assigned", "occurred_at": at(20), "ticket_id": t,
          "handler_type": "agent", "agent_id": f"a{n % 3}", "team": "support"},
         {"event_id": f"{c}-6", "event_type": "ticket.message", "occurred_at": at(25), "ticket_id": t,
          "author": "agent", "channel": "email"}],
        [{"event_id": f"{c}-7", "event_type": "ticket.status_changed", "occurred_at": at(30 + n % 200), "ticket_id": t,
          "status": "solved" if n % 4 else "pending"},
         {"event_id": f"{c}-8", "event_type": "survey.responded", "occurred_at": at(240), "survey_id": f"s{n}",
          "ticket_id": t, "csat": 1 + n % 5}],
    ]
    return [[{**base, **e} for e in step] for step in steps]


def chunks(customers: int) -> list[list[dict[str, Any]]]:
    """Chunk k holds step 0 of customer k, step 1 of k-1, ... so every customer spans 4 chunks."""
    plan = [customer_events(n) for n in range(customers)]
    return [
        [e for n in range(customers) if 0 <= k - n < 4 for e in plan[n][k - n]]
        for k in range(customers + 3)
    ]


@pytest.fixture
def pipeline(broker, topics, db, tmp_path):
    log = tmp_path / "pipeline.log"
    command = [
        sys.executable, "-m", "pipelines.cli", "run", "--follow", "--db", str(db),
        "--bootstrap-servers", broker.bootstrap_servers,
        "--topic-tickets", topics["tickets"], "--topic-chats", topics["chats"], "--topic-surveys", topics["surveys"],
        "--max-batch-events", str(MAX_BATCH), "--poll-interval", "0.2s",
    ]
    with open(log, "w") as out:
        # maintenance (file merges, snapshot expiry) every 8 batches and the small files' merge
        # every 3, both beside the next batch, so readers also meet them
        env = {**os.environ, "CXJ_REPLICA_COMPACT_EVERY": "8", "CXJ_REPLICA_MERGE_EVERY": "3"}
        proc = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        yield proc, log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def wait_for_replica(db: Path, proc: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    """Until the pipeline has published (never opens the db file, so the pipeline can start)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"pipeline exited early:\n{log.read_text()[-3000:]}"
        if catalog_path(db).exists():
            try:
                connect_replica(db).close()
                return
            except ReplicaNotReady:
                pass
        time.sleep(0.1)
    raise AssertionError(f"no replica after {timeout}s:\n{log.read_text()[-3000:]}")


def test_reader_process_sees_growing_whole_batches_while_pipeline_runs(broker, topics, db, tmp_path, pipeline):
    """Lock-step, so nothing depends on timing: each chunk is sent only after the replica shows
    the previous one AND the reader process has reported it; every state in between is whole."""
    proc, log = pipeline
    plan = chunks(CUSTOMERS)
    totals = list(itertools.accumulate(len(c) for c in plan))  # events visible after each chunk
    sent = send_events(broker, topics, plan[0])
    wait_for_replica(db, proc, log)
    watcher = connect(db)  # the replica: the pipeline holds the file

    def visible() -> int:
        return watcher.execute("SELECT count(*) FROM events").fetchone()[0]

    def wait_until(what: str, predicate, timeout: float = 180.0) -> None:  # generous: only a hang should fail
        deadline = time.monotonic() + timeout
        while not predicate():
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"{what} not within {timeout}s\n{log.read_text()[-2000:]}"
            time.sleep(0.3)

    wait_until("chunk 0 visible", lambda: visible() == totals[0])
    stop = tmp_path / "stop-reader"
    reader = subprocess.Popen([sys.executable, "-c", READER, str(db), str(stop)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[dict[str, Any]] = []
    collector = threading.Thread(target=lambda: lines.extend(json.loads(line) for line in reader.stdout if line.strip()),
                                 daemon=True)
    collector.start()
    try:
        for k, chunk in enumerate(plan):
            if k:
                sent += send_events(broker, topics, chunk)
                wait_until(f"chunk {k} visible", lambda: visible() == totals[k])  # noqa: B023 (waited on within this iteration)
            wait_until(f"the reader reporting chunk {k}", lambda: any(line.get("events") == totals[k] for line in lines))  # noqa: B023 (waited on within this iteration)
    finally:
        watcher.close()
        stop.touch()
        _, err = reader.communicate(timeout=300)
        collector.join(10)
        (tmp_path / "reader.jsonl").write_text("\n".join(json.dumps(line, default=str) for line in lines))
        print(f"reader: exit {reader.returncode}, {len(lines)} reads, last {lines[-1:]}, stderr {err[-500:]!r}")
    total = totals[-1]
    assert sent == total
    errors = [line["error"] for line in lines if "error" in line]
    assert not errors, errors[:5]
    assert reader.returncode == 0, err[-2000:]
    seen = [line["events"] for line in lines]
    batches = [line["batch"] for line in lines]
    assert set(totals) <= set(seen), "the reader missed a state it was waited for"
    assert seen[0] == totals[0] and seen[-1] == total
    assert all(b >= a for a, b in zip(seen, seen[1:])), "landed events seen by the reader went down"
    assert all(b >= a for a, b in zip(batches, batches[1:])), "batches seen by the reader went down"
    assert len(set(batches)) >= len(plan), f"the reader saw {len(set(batches))} distinct batches for {len(plan)} chunks"
    for line in lines:  # whole batches only, and the marts agree with the tables in the same snapshot
        assert line["events"] == line["landed"], line  # every landed batch's events, no more, no less
        assert line["linked"] == line["in_journeys"], line  # journeys and their event links agree
        assert line["kpi_journeys"] == line["path_journeys"] == line["csat_journeys"] == line["journeys"], line
        assert line["backlog"] == line["open_journeys"], line

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]

    # the database file is what users open once the pipeline is stopped ...
    with duckdb.connect(str(db), read_only=True) as con:
        landed_batches = con.execute("SELECT count(*) FROM pipeline_batches").fetchone()[0]
        # every chunk landed in batches of its own (each was sent after the last one was visible)
        assert landed_batches >= len(plan) >= MIN_BATCHES, f"only {landed_batches} batches landed"
        assert batches[-1] == landed_batches  # the reader's last read saw the last batch
        assert con.execute("SELECT count(*) FROM events").fetchone()[0] == total
        assert con.execute("SELECT count(*) FROM journeys").fetchone()[0] == CUSTOMERS
        assert con.execute("SELECT count(*) FROM journey_events").fetchone()[0] == total
        assert con.execute("SELECT sum(journeys) FROM mart_daily_kpis").fetchone()[0] == CUSTOMERS
        assert con.execute("SELECT count(*) FROM mart_handoff_pingpong").fetchone()[0] > 0
        database = {t: con.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall() for t in TABLES}
    # ... and the replica published every batch, identical to it
    replica = connect_replica(db)
    try:
        for table in TABLES:
            assert replica.execute(f"SELECT * FROM {table} ORDER BY ALL").fetchall() == database[table], table
    finally:
        replica.close()
    text = log.read_text()
    assert text.count("maintenance in") >= 2, "replica maintenance did not run"
    assert text.count("small files merged") >= 2, "the replica's small files were not merged"
    waits = sorted(line["wait_s"] for line in lines)
    fresh = sorted(line["wait_s"] for line in lines if line["fresh"])
    print(f"\n{landed_batches} batches; reader queries {len(lines)}: p50 {waits[len(waits) // 2]:.3f}s "
          f"max {waits[-1]:.3f}s (new connection each: p50 {fresh[len(fresh) // 2]:.3f}s max {fresh[-1]:.3f}s)")
    print("\n".join(line for line in text.splitlines() if "maintenance in" in line))
    # readers keep reading the replica when the pipeline stops: they never hold the database file
    con, source = open_reader(db)
    con.close()
    assert source == "replica"


def test_reader_without_pipeline_reads_the_replica(broker, topics, db):
    from tests.support import run_once

    send_events(broker, topics, [e for chunk in chunks(3) for e in chunk])
    run_once(db, broker, topics)
    con, source = open_reader(db)
    try:
        assert source == "replica"
        assert con.execute("SELECT count(*) FROM journeys").fetchone()[0] == 3
    finally:
        con.close()
    frame = query("SELECT channel, sum(journeys) AS journeys FROM mart_daily_kpis GROUP BY ALL ORDER BY 1", db)
    assert frame.columns == ["channel", "journeys"] and frame["journeys"].sum() == 3
    from pipelines import connect as exported_connect
    from pipelines import query as exported_query

    assert exported_connect is connect and exported_query is query


def test_crash_between_land_and_publish_is_repaired_at_start(broker, topics, db, monkeypatch):
    """Batches landed without a publish (crash, CXJ_REPLICA=0 run) are published when the writer starts."""
    from pipelines.storage.store import Store
    from tests.support import run_once

    plan = chunks(6)
    send_events(broker, topics, [e for chunk in plan[:4] for e in chunk])
    run_once(db, broker, topics)
    monkeypatch.setenv("CXJ_REPLICA", "0")  # lands without publishing, like a crash right after COMMIT
    send_events(broker, topics, [e for chunk in plan[4:] for e in chunk])
    run_once(db, broker, topics)
    replica = connect_replica(db)
    stale = replica.execute("SELECT count(*) FROM events").fetchone()[0]
    replica.close()
    with duckdb.connect(str(db), read_only=True) as con:
        truth = {t: con.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall() for t in TABLES}
    assert stale < len(truth["events"])
    monkeypatch.setenv("CXJ_REPLICA", "1")
    Store(db).close()  # the writer starting up catches the replica up
    replica = connect_replica(db)
    try:
        for table in TABLES:
            assert replica.execute(f"SELECT * FROM {table} ORDER BY ALL").fetchall() == truth[table], table
    finally:
        replica.close()


def test_replica_is_rebuilt_when_it_does_not_match_the_database(broker, topics, db, tmp_path):
    """A replica left from another database (same path, new file) is replaced, never mixed."""
    from pipelines.storage.store import Store
    from tests.support import run_once

    send_events(broker, topics, [e for chunk in chunks(4) for e in chunk])
    run_once(db, broker, topics)
    os.remove(db)  # a fresh database next to the old replica
    Store(db).close()
    replica = connect_replica(db)
    try:
        assert replica.execute("SELECT count(*) FROM events").fetchone()[0] == 0
        assert replica.execute("SELECT published_batch_id FROM replica_state").fetchone()[0] == 0
    finally:
        replica.close()


def test_changed_view_files_replace_the_replicas_views_without_a_rebuild(db, tmp_path, monkeypatch):
    import pipelines.storage.replica as replica_module
    from pipelines.storage.store import Store

    Store(db).close()
    replica = connect_replica(db)
    rebuilt_at = replica.execute("SELECT rebuilt_at FROM replica_state").fetchone()[0]
    replica.close()
    statements = replica_module.view_statements()
    extra = "CREATE OR REPLACE VIEW zz_extra AS SELECT count(*) AS journeys FROM core_journeys"
    monkeypatch.setattr(replica_module, "view_statements", lambda: statements + [extra])
    Store(db).close()
    replica = connect_replica(db)
    try:
        assert replica.execute("SELECT journeys FROM zz_extra").fetchone() == (0,)
        assert replica.execute("SELECT rebuilt_at FROM replica_state").fetchone()[0] == rebuilt_at  # no rebuild
    finally:
        replica.close()
