"""Several pipeline processes writing one shared lake (DuckLake, PostgreSQL catalog) at once.

Everything is real: a throwaway PostgreSQL cluster started by the test (tests/postgres_cluster.py),
the local broker, `cxj run --once` subprocesses, and reader subprocesses using `connect()`.
The reference is one process reading every partition into a lake of its own; the shared lake
written by several processes must hold the same rows (docs/storage.md "Shared lake").
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb
import pytest

from pipelines.kafka.simulator import generate_customer_events, to_messages
from pipelines.storage.lake_target import parse_lake
from pipelines.storage.replica import LAKE_ALIAS, TABLES, load_extensions, sql_literal
from tests.support import new_topics, send

ROOT = Path(__file__).resolve().parents[1]
PARTITIONS = 4
CUSTOMERS = 150
SEED = 41
BATCH = 400  # records per batch: several publishes per writer, interleaved between writers

# Columns that say *who* landed a row, *when* or *in which batch*: they differ between any two
# runs (even two single-process runs) and are compared through the accounting instead.
BOOKKEEPING = {"writer_id", "batch_id", "landed_at", "updated_at", "detected_at", "computed_at"}
# pipeline_batches: one row per batch (batches differ by construction; their sums are compared);
# journey_revisions: changes between consecutive batches, so they depend on where batches cut.
NOT_COMPARED = {"pipeline_batches", "journey_revisions"}


def cxj(*args: str, env: dict[str, str] | None = None) -> list[str]:
    return [sys.executable, "-m", "pipelines.cli", *args]


def run_args(broker, topics: dict[str, str], db: Path, lake: str, data: Path, *extra: str) -> list[str]:
    return cxj("run", "--once", "--db", str(db), "--lake", lake, "--lake-data", str(data),
               "--bootstrap-servers", broker.bootstrap_servers,
               "--topic-tickets", topics["tickets"], "--topic-chats", topics["chats"], "--topic-surveys", topics["surveys"],
               "--max-batch-events", str(BATCH), *extra)


def start(command: list[str], log: Path, **env: str) -> subprocess.Popen:
    out = open(log, "w")
    return subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env})


def finish(proc: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    code = proc.wait(timeout=timeout)
    assert code == 0, f"exit {code}: {log.read_text()[-3000:]}"


def lake_con(url: str) -> duckdb.DuckDBPyConnection:
    """A plain (unhardened) connection for the test's own comparisons."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    load_extensions(con, postgres=True)
    con.execute(f"ATTACH {sql_literal(parse_lake(url).attach_target)} AS {LAKE_ALIAS} (READ_ONLY)")
    con.execute(f"USE {LAKE_ALIAS}")
    return con


def contents(url: str) -> dict[str, list[tuple]]:
    """Every compared table's rows without the bookkeeping columns, in a fixed order."""
    con = lake_con(url)
    try:
        out = {}
        for table in TABLES:
            if table in NOT_COMPARED:
                continue
            columns = [r[0] for r in con.execute(f"DESCRIBE {table}").fetchall() if r[0] not in BOOKKEEPING]
            listed = ", ".join(f'"{c}"' for c in columns)
            out[table] = con.execute(f"SELECT {listed} FROM {table} ORDER BY ALL").fetchall()
        return out
    finally:
        con.close()


def accounting(url: str) -> dict[str, Any]:
    con = lake_con(url)
    try:
        consumed, landed, duplicates, dead = con.execute(
            "SELECT sum(consumed), sum(landed), sum(duplicates), sum(dead_letters) FROM pipeline_batches").fetchone()
        return {
            "consumed": int(consumed), "landed": int(landed), "duplicates": int(duplicates), "dead": int(dead),
            "events": con.execute("SELECT count(*) FROM events").fetchone()[0],
            "dead_letters": con.execute("SELECT count(*) FROM dead_letters").fetchone()[0],
            "offsets": con.execute("SELECT sum(next_offset) FROM pipeline_offsets").fetchone()[0],
            "writers": sorted(r[0] for r in con.execute("SELECT DISTINCT writer_id FROM pipeline_batches").fetchall()),
            "conflicts": con.execute("SELECT count(*) FROM lake_conflicts").fetchone()[0],
        }
    finally:
        con.close()


def marts(url: str) -> dict[str, list[tuple]]:
    """Every mart view's full contents (the marts are views over the lake's tables)."""
    con = lake_con(url)
    try:
        names = [r[0] for r in con.execute(
            f"SELECT view_name FROM duckdb_views() WHERE database_name = '{LAKE_ALIAS}' AND view_name LIKE 'mart_%' "
            "ORDER BY 1").fetchall()]
        return {n: con.execute(f"SELECT * FROM {n} ORDER BY ALL").fetchall() for n in names}
    finally:
        con.close()


# A reader process: one long-lived connect(lake=...) querying in a loop while the writers run.
# Each query sees one snapshot, so per writer the events must equal the batches' landed sum and
# the dead letters theirs: a half-published batch would break one of the two.
READER = r"""
import json, sys, time
from pipelines.storage.reader import connect
url, stop = sys.argv[1], sys.argv[2]
import os
con = connect(lake=url, wait_s=900)  # the first writer creates the lake; slow on a loaded machine
seen, bad, slowest, states = 0, [], 0.0, set()
while not os.path.exists(stop):
    t = time.perf_counter()
    rows = con.execute('''
        WITH b AS (SELECT writer_id, sum(landed) AS landed, sum(dead_letters) AS dead, max(batch_id) AS last
                   FROM pipeline_batches GROUP BY writer_id),
             e AS (SELECT writer_id, count(*) AS events FROM events GROUP BY writer_id),
             d AS (SELECT writer_id, count(*) AS dead FROM dead_letters GROUP BY writer_id)
        SELECT b.writer_id, b.landed, coalesce(e.events, 0), b.dead, coalesce(d.dead, 0), b.last,
               (SELECT count(*) FROM mart_daily_kpis)
        FROM b LEFT JOIN e USING (writer_id) LEFT JOIN d USING (writer_id) ORDER BY 1''').fetchall()
    slowest = max(slowest, time.perf_counter() - t)
    seen += 1
    states.add(tuple((r[0], r[5]) for r in rows))
    for writer, landed, events, dead, dead_rows, last, _ in rows:
        if landed != events or dead != dead_rows:
            bad.append([writer, last, landed, events, dead, dead_rows])
    time.sleep(0.05)
con.close()
print(json.dumps({"queries": seen, "bad": bad[:10], "slowest_s": slowest, "states": len(states)}))
"""


@pytest.fixture(scope="module")
def dataset(broker, tmp_path_factory) -> dict[str, Any]:
    """Topics of 4 partitions, keyed by customer_id (so a customer's three topics share a
    partition index), with re-deliveries, late events and malformed messages."""
    topics = new_topics(broker, partitions=PARTITIONS)
    events = generate_customer_events(CUSTOMERS, SEED, datetime(2026, 9, 1, tzinfo=timezone.utc))
    sent = send(broker, topics, to_messages(events, SEED, 0.03, 0.03, 0.01))
    return {"topics": topics, "sent": sent, "tmp": tmp_path_factory.mktemp("shared-lake")}


@pytest.fixture(scope="module")
def single_run(broker, postgres, dataset) -> dict[str, Any]:
    """The reference: ONE process reads every partition into a lake of its own."""
    tmp = dataset["tmp"]
    url = postgres.new_database("lake_single")
    log = tmp / "single.log"
    finish(start(run_args(broker, dataset["topics"], tmp / "single.duckdb", url, tmp / "single-data"), log), log)
    return {"url": url, "contents": contents(url), "accounting": accounting(url), "marts": marts(url)}


def test_two_writers_at_once_equal_a_single_run(broker, postgres, dataset, single_run):
    """Two `cxj run --once` processes, partitions 0,1 and 2,3, started together into one lake,
    while a reader queries it in a loop: the lake's tables and marts equal the single run's,
    every consumed record is accounted for, and the reader never saw half a batch."""
    tmp = dataset["tmp"]
    url = postgres.new_database("lake_two")
    stop = tmp / "reader.stop"
    reader = subprocess.Popen([sys.executable, "-c", READER, url, str(stop)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    started = time.monotonic()
    writers = [
        (start(run_args(broker, dataset["topics"], tmp / f"two-{n}.duckdb", url, tmp / "two-data",
                        "--partitions", parts, "--writer-id", f"w{n}", "--verbose"), tmp / f"two-{n}.log"), tmp / f"two-{n}.log")
        for n, parts in ((1, "0,1"), (2, "2-3"))
    ]
    for proc, log in writers:
        finish(proc, log)
    writers_s = time.monotonic() - started
    stop.touch()
    out, err = reader.communicate(timeout=120)
    assert reader.returncode == 0, err[-2000:]
    seen = json.loads(out.strip().splitlines()[-1])

    got = accounting(url)
    want = single_run["accounting"]
    assert got["writers"] == ["w1", "w2"]
    assert got["consumed"] == want["consumed"] == dataset["sent"], "every message sent was consumed exactly once"
    assert got["consumed"] == got["landed"] + got["duplicates"] + got["dead"]
    assert (got["landed"], got["duplicates"], got["dead"]) == (want["landed"], want["duplicates"], want["dead"])
    assert got["events"] == got["landed"] and got["dead_letters"] == got["dead"]
    assert got["offsets"] == want["offsets"] == dataset["sent"]
    assert got["conflicts"] == 0, "a customer reached two writers"
    for name, rows in single_run["contents"].items():
        assert contents(url)[name] == rows, f"{name} differs from the single run"
    assert marts(url) == single_run["marts"] and single_run["marts"], "marts differ from the single run"
    for n in (1, 2):  # both really wrote at once: their logs show publishes, and the reader saw states change
        assert "publishing to shared lake" in (tmp / f"two-{n}.log").read_text()
    assert seen["bad"] == [], f"reader saw half a batch: {seen['bad']}"
    assert seen["queries"] >= 3 and seen["states"] >= 2, seen
    publishes = sorted(float(m) for n in (1, 2) for m in re.findall(
        r"replica: published batches \d+-\d+ \(\d+ customers\) in ([0-9.]+)s", (tmp / f"two-{n}.log").read_text()))
    retried = sum((tmp / f"two-{n}.log").read_text().count("lost a commit conflict") for n in (1, 2))
    print(f"\ntwo writers: {writers_s:.1f}s for {dataset['sent']} messages; {len(publishes)} publishes, median "
          f"{publishes[len(publishes) // 2]:.2f}s, max {publishes[-1]:.2f}s; {retried} commits retried after a conflict; "
          f"reader {seen['queries']} queries, slowest {seen['slowest_s']:.2f}s, {seen['states']} distinct states")


def test_killed_writer_republishes_without_doubling(broker, postgres, dataset, single_run):
    """A writer killed mid-run, restarted, and one that landed without publishing (as if it died
    right after its commit): their restarts publish what is missing, once; a repeated run
    changes nothing. The lake ends equal to the single run's."""
    tmp = dataset["tmp"]
    url = postgres.new_database("lake_killed")
    topics = dataset["topics"]
    db1, db2 = tmp / "k-1.duckdb", tmp / "k-2.duckdb"
    small = ("--max-batch-events", "150")
    # w2 lands everything but publishes nothing (CXJ_REPLICA=0: the crash-after-commit case)
    log2 = tmp / "k-2a.log"
    finish(start(run_args(broker, topics, db2, url, tmp / "k-data", "--partitions", "2,3", "--writer-id", "w2", *small),
                 log2, CXJ_REPLICA="0"), log2)
    # w1 is killed (SIGKILL) once the lake shows its first batch: a backlog publishes its first
    # batch at once and the rest at most every REPLICA_DEFER_MAX_S (30 s) or at its end, so
    # waiting for a second published batch raced the run's last publish against its exit
    log1 = tmp / "k-1a.log"
    proc = start(run_args(broker, topics, db1, url, tmp / "k-data", "--partitions", "0,1", "--writer-id", "w1", *small), log1)
    deadline = time.monotonic() + 180
    published = 0
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            con = lake_con(url)
            try:
                published = con.execute("SELECT count(*) FROM pipeline_batches WHERE writer_id = 'w1'").fetchone()[0]
            finally:
                con.close()
        except duckdb.Error:
            published = 0  # the lake's tables are not created yet
        if published >= 1:
            break
        time.sleep(0.2)
    assert proc.poll() is None, f"w1 finished before it could be killed: {log1.read_text()[-2000:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    half = accounting(url)
    assert half["writers"] == ["w1"] and half["consumed"] < single_run["accounting"]["consumed"]
    # restarts: w1 resumes from its database and publishes the rest; w2 publishes all it landed
    for n, db, parts in ((1, db1, "0,1"), (2, db2, "2,3")):
        log = tmp / f"k-{n}b.log"
        finish(start(run_args(broker, topics, db, url, tmp / "k-data", "--partitions", parts, "--writer-id", f"w{n}", *small), log), log)
    once = contents(url)
    got = accounting(url)
    want = single_run["accounting"]
    assert (got["consumed"], got["landed"], got["duplicates"], got["dead"]) == \
           (want["consumed"], want["landed"], want["duplicates"], want["dead"])
    assert got["events"] == got["landed"] and got["offsets"] == want["offsets"]
    assert once == single_run["contents"]
    # once more: nothing new to land, nothing published twice
    log = tmp / "k-2c.log"
    finish(start(run_args(broker, topics, db2, url, tmp / "k-data", "--partitions", "2,3", "--writer-id", "w2", *small), log), log)
    assert contents(url) == once and accounting(url) == got
    # a writer keeps its partitions and its id: both refused with one line, nothing published
    for args, code, says in ((("--partitions", "2,3", "--writer-id", "w1"), 4, "which --partitions leaves out"),
                             (("--partitions", "0,1", "--writer-id", "w9"), 2, "publishes to the lake as writer 'w1'")):
        done = subprocess.run(run_args(broker, topics, db1, url, tmp / "k-data", *args, *small), cwd=ROOT,
                              capture_output=True, text=True, timeout=240)
        errors = [line for line in done.stderr.splitlines() if " ERROR " in line]
        assert done.returncode == code and len(errors) == 1 and says in errors[0], done.stderr[-2000:]
    assert contents(url) == once and accounting(url) == got


def test_customer_seen_by_two_writers_is_reported(broker, postgres, tmp_path):
    """Producers that do not key by customer_id put a customer's events on two partitions read by
    two writers: the lake records the customer in lake_conflicts, the writer logs it, and
    `cxj status --lake` says WARN (exit 1) instead of showing merged journeys as fine."""
    topics = new_topics(broker, partitions=2)
    events = generate_customer_events(3, SEED, datetime(2026, 9, 1, tzinfo=timezone.utc))
    customers = sorted({e["customer_id"] for e in events})
    split = customers[0]  # its events alternate between the partitions; the others stay on one
    home = {customers[1]: 0, customers[2]: 1}
    from kafka import KafkaProducer

    producer = KafkaProducer(**broker.client_kwargs())
    alternate = 0
    for stream, key, value in to_messages(events, SEED):
        customer = key.decode()
        if customer == split:
            partition, alternate = alternate, 1 - alternate
        else:
            partition = home[customer]
        producer.send(topics[stream], key=key, value=value, partition=partition)
    producer.flush()
    producer.close()
    url = postgres.new_database("lake_conflict")
    logs = []
    for n, part in ((1, "0"), (2, "1")):
        log = tmp_path / f"c-{n}.log"
        finish(start(run_args(broker, topics, tmp_path / f"c-{n}.duckdb", url, tmp_path / "c-data",
                              "--partitions", part, "--writer-id", f"w{n}"), log), log)
        logs.append(log.read_text())
    con = lake_con(url)
    try:
        rows = con.execute("SELECT kind, key, writer_id, other_writer_id FROM lake_conflicts ORDER BY ALL").fetchall()
    finally:
        con.close()
    assert rows == [("customer", split, "w2", "w1")]
    assert "also landed by writer(s) 'w1'" in logs[1] and split in logs[1]
    assert "landed by writer" not in logs[0]  # w1 published first: the conflict is found by the second
    status = subprocess.run(cxj("status", "--lake", url, "--bootstrap-servers", broker.bootstrap_servers,
                                "--topic-tickets", topics["tickets"], "--topic-chats", topics["chats"],
                                "--topic-surveys", topics["surveys"]),
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert status.returncode == 1, status.stdout + status.stderr
    assert "1 customers landed by two writers" in status.stdout + status.stderr


def test_sql_reads_the_shared_lake(broker, postgres, dataset, single_run):
    """`cxj sql --lake` and CXJ_LAKE read the shared lake with the same names as the replica;
    writes stay refused there too."""
    url = single_run["url"]
    want = single_run["accounting"]["events"]
    for args, env in ((("--lake", url), {}), ((), {"CXJ_LAKE": url})):
        done = subprocess.run(cxj("sql", *args, "--format", "csv", "SELECT count(*) AS n FROM events"),
                              cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, **env})
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["n", str(want)]
    refused = subprocess.run(cxj("sql", "--lake", url, "DELETE FROM events"), cwd=ROOT, capture_output=True, text=True,
                             timeout=120)
    assert refused.returncode == 1 and "read-only" in refused.stderr
    con = lake_con(url)
    try:
        assert con.execute("SELECT count(*) FROM events").fetchone()[0] == want
    finally:
        con.close()
