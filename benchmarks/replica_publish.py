"""What one replica publish costs as the stored history grows (no broker, no Beam: seconds).

Fills a database with synthetic rows (``--rows`` events, journeys, journey_events and journey
metrics, one journey per ten events, customers of ten journeys), builds its replica, then lands
``--batches`` synthetic batches the way the store does (new events for ``--customers``
customers; each customer's latest journey rewritten, its older journeys left as landed; for one
customer in twenty the latest journey merged into the one before: that one rewritten, the
latest removed, with its revision) and times each publish and each verify. ``--rows 0`` means
just the rows the batches rewrite (430 customers of 100 events: 43,000). Run it at two sizes to see growth::

  .venv/bin/python benchmarks/replica_publish.py --rows 0
  .venv/bin/python benchmarks/replica_publish.py --rows 1000000

The rows are synthetic but have the landing tables' columns; the replica is checked against the
database row for row at the end (a wrong publish fails the run).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipelines.storage.replica import LAKE_ALIAS, TABLES  # noqa: E402
from pipelines.storage.store import Store  # noqa: E402

EVENTS_PER_JOURNEY = 10
JOURNEYS_PER_CUSTOMER = 10


def fill(con, rows: int, batch_id: int) -> None:
    """``rows`` events (and as many journey_events), rows/10 journeys and metrics, in batch 1."""
    if rows == 0:
        return
    journeys = max(1, rows // EVENTS_PER_JOURNEY)
    con.execute(f"""INSERT INTO events SELECT 'e' || i, 'ticket.message', TIMESTAMPTZ '2026-01-01' + INTERVAL (i) SECOND, NULL,
        'c' || (i // {EVENTS_PER_JOURNEY * JOURNEYS_PER_CUSTOMER}), 't' || (i // {EVENTS_PER_JOURNEY}), NULL, NULL, 'email',
        NULL, NULL, NULL, NULL, 'customer', NULL, NULL, NULL, '{{}}', 'topic', 0, i, NULL, {batch_id}, now()
        FROM range({rows}) r(i)""")
    con.execute(f"""INSERT INTO journey_events SELECT 'e' || i, 'j' || (i // {EVENTS_PER_JOURNEY}),
        'c' || (i // {EVENTS_PER_JOURNEY * JOURNEYS_PER_CUSTOMER}), {batch_id} FROM range({rows}) r(i)""")
    insert_journeys(con, f"SELECT i AS j FROM range({journeys}) r(i)", batch_id)
    insert_batch(con, batch_id)


def insert_journeys(con, ids: str, batch_id: int) -> None:
    con.execute(f"""INSERT INTO journeys SELECT 'j' || j, 'c' || (j // {JOURNEYS_PER_CUSTOMER}), 'resolved',
        TIMESTAMPTZ '2026-01-01', NULL, TIMESTAMPTZ '2026-01-02', now(), 1.0, 1.0, 0, 0, 0, 1, 1, 0, NULL, NULL, true,
        ['email'], ['a1'], ['t1'], ['ticket:' || j], {EVENTS_PER_JOURNEY}, {batch_id} FROM ({ids})""")
    con.execute(f"""INSERT INTO journey_metrics SELECT 'j' || j, 'c' || (j // {JOURNEYS_PER_CUSTOMER}), 'default',
        NULL, NULL, NULL, NULL, NULL, 1, NULL, NULL, NULL, NULL, NULL, true, false, false, NULL, NULL, NULL,
        0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, {batch_id} FROM ({ids})""")


def insert_batch(con, batch_id: int) -> None:
    con.execute(f"""INSERT INTO pipeline_batches VALUES ({batch_id}, now(), now(), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        NULL, NULL, NULL, NULL, '[]')""")


def land_batch(con, batch_id: int, customers: int, rows: int, offset: int) -> None:
    """One synthetic batch, as the store lands one: new events, each touched customer's latest
    journey rewritten (older ones settled); for one customer in twenty the latest journey is
    merged into the one before it (that one rewritten, the latest removed, with its revision)."""
    total_customers = max(1, rows // (EVENTS_PER_JOURNEY * JOURNEYS_PER_CUSTOMER))
    first = (offset * customers) % total_customers
    picked = f"SELECT ({first} + k) % {total_customers} AS c FROM range({customers}) r(k)"
    last = JOURNEYS_PER_CUSTOMER - 1
    # (customer, journey the new events join, journey removed or NULL)
    plan = (f"SELECT c, c * {JOURNEYS_PER_CUSTOMER} + {last} - CASE WHEN c % 20 = 0 THEN 1 ELSE 0 END AS j, "
            f"CASE WHEN c % 20 = 0 THEN c * {JOURNEYS_PER_CUSTOMER} + {last} END AS gone FROM ({picked})")
    rewritten = f"SELECT j FROM ({plan}) UNION ALL SELECT gone FROM ({plan}) WHERE gone IS NOT NULL"
    con.execute("BEGIN TRANSACTION")
    for table in ("journeys", "journey_metrics", "journey_events"):
        con.execute(f"DELETE FROM {table} WHERE journey_id IN (SELECT 'j' || j FROM ({rewritten}))")
    insert_journeys(con, f"SELECT j FROM ({plan})", batch_id)
    con.execute(f"""INSERT INTO journey_revisions SELECT {batch_id}, now(), 'j' || gone, 'c' || c, 'removed', [],
        'new_events', [], 0, 0, [], '{{}}', '{{}}' FROM ({plan}) WHERE gone IS NOT NULL""")
    new_events = f"SELECT 'b{batch_id}-' || c || '-' || k AS event_id, c, j FROM ({plan}), range(12) r(k)"
    con.execute(f"""INSERT INTO events SELECT event_id, 'ticket.message', now(), NULL, 'c' || c, NULL, NULL, NULL,
        'email', NULL, NULL, NULL, NULL, 'customer', NULL, NULL, NULL, '{{}}', 'topic', 0, 0, NULL, {batch_id}, now()
        FROM ({new_events})""")
    con.execute(f"INSERT INTO journey_events SELECT event_id, 'j' || j, 'c' || c, {batch_id} FROM ({new_events})")
    insert_batch(con, batch_id)
    con.execute("COMMIT")


class TimedConnection:
    """The replica's connection, timing every statement (``--statements``)."""

    def __init__(self, con) -> None:
        self.con, self.seconds = con, {}

    def execute(self, sql: str, *args):
        started = time.perf_counter()
        try:
            return self.con.execute(sql, *args)
        finally:
            key = " ".join(sql.split())[:90]
            self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - started

    def __getattr__(self, name: str):
        return getattr(self.con, name)


def compare(con) -> None:
    """Every replica table equals the database's, row for row (as multisets)."""
    source = con.execute("SELECT current_database()").fetchone()[0]
    for table in TABLES:
        missing = con.execute(f"SELECT count(*) FROM (FROM {source}.{table} EXCEPT ALL FROM {LAKE_ALIAS}.{table})").fetchone()[0]
        extra = con.execute(f"SELECT count(*) FROM (FROM {LAKE_ALIAS}.{table} EXCEPT ALL FROM {source}.{table})").fetchone()[0]
        if missing or extra:
            raise SystemExit(f"replica differs from the database in {table}: {missing} rows missing, {extra} extra")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--customers", type=int, default=430, help="customers touched per batch (5,000 events / 11.6)")
    parser.add_argument("--keep", type=Path, help="keep the database here")
    parser.add_argument("--statements", action="store_true", help="print the seconds of every statement of the publishes")
    args = parser.parse_args()
    os.environ.setdefault("CXJ_REPLICA_COMPACT_EVERY", "0")
    work = Path(tempfile.mkdtemp(prefix="cxj-publish-"))
    db = args.keep or work / "publish.duckdb"
    try:
        with Store(db) as store:
            fill(store.con, args.rows, 1)
        started = time.perf_counter()
        with Store(db) as store:  # the replica is (re)built at open
            rebuild_s = time.perf_counter() - started
            replica = store.replica
            timed = TimedConnection(replica.con)
            if args.statements:
                replica.con = timed
            publish_s, verify_s, cpu_s = [], [], []
            rows = max(args.rows, args.customers * EVENTS_PER_JOURNEY * JOURNEYS_PER_CUSTOMER)
            if args.rows == 0:
                fill(store.con, rows, 1)  # the rows the batches rewrite, published as they land
                replica.publish()
            for k in range(args.batches):
                batch_id = 2 + k
                land_batch(store.con, batch_id, args.customers, rows, k)
                cpu, wall = time.process_time(), time.perf_counter()
                result = replica.publish()
                publish_s.append(time.perf_counter() - wall)
                wall = time.perf_counter()
                rebuilt = replica.verify()
                verify_s.append(time.perf_counter() - wall)
                cpu_s.append(time.process_time() - cpu)
                if result is None or rebuilt is not None:
                    raise SystemExit(f"batch {batch_id}: {'not published' if result is None else 'verify rebuilt the replica'}")
            compare(timed.con)
            for key, seconds in sorted(timed.seconds.items(), key=lambda kv: -kv[1])[:25]:
                print(f"{seconds:8.3f}  {key}") if args.statements else None
        out = {"rows": args.rows, "batches": args.batches, "customers_per_batch": args.customers,
               "rebuild_s": round(rebuild_s, 2), "publish_s_median": round(statistics.median(publish_s), 3),
               "publish_s_max": round(max(publish_s), 3), "verify_s_median": round(statistics.median(verify_s), 3),
               "cpu_s_median": round(statistics.median(cpu_s), 3),
               "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
               "load_average": os.getloadavg()[0]}
        print(json.dumps(out))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
