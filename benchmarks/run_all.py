"""All three performance targets in one run (`make bench`; `make bench-quick` for a small scale).

1. throughput: raw kafka-python consumption of N pre-produced events, then `run --once` of the
   same topics, in the same run, end to end (closing the store, with its last checkpoint,
   included, as in benchmarks/throughput.py); reports both rates and their ratio (target >= 0.5).
2. freshness: `cxj run --follow` while `cxj simulate --rate R` offers R events/s; reports
   p50/p95/p99/max of landed_at - Kafka record timestamp per event, and how far the read replica
   trails the database (each batch's landing vs the moment a reader first sees it).
3. growth: a batch of the next 5,000 events on an empty store vs on a store holding 1M events and
   1M+ journeys (ratio of the medians of five landings on each, the store put back before each,
   and the median of the five rounds' ratios: each round lands on every store, one after the
   other; target <= 1.5), the same batch with 50 landed events delivered again (1%: what a batch with
   redelivered events costs on that store), the same batch on that store before it was grown (the
   customers' history without the bulk: what size costs, apart from what history costs), the
   same batch for returning customers whose rows lie
   all over that store (judged against the same aim: the case row id ranges cannot skip), and the
   same batch from customers new to that store (reported: what the store's size alone costs),
   these two each landed on a copy of it in the same rounds, a 5-event
   batch for a customer with 200k stored events (target < 1 s; the median of three landings, each
   beside the same 5 events for a new customer). The batches are timed as `run_once`; closing the
   store after each (its last checkpoint) is reported beside them as close_s.
4. memory (the growth target's last part): the peak RSS of `cxj run --once` over backlogs of
   100k, 200k and 1M events (flat; --quick: 10k and 20k; --backlogs names others, e.g.
   `--only memory --backlogs 3000000` for a longer soak of about twelve minutes), by process, and by
   tenth of the largest backlog's run, both processes together and each alone (whether memory
   still rises late in it), and the run's process by kind of mapping (benchmarks/mappings.py:
   DuckDB's blocks apart from glibc's heap and arenas).

Every figure goes to stdout and to benchmarks/results/run_all.json, and at the end each target's
figure beside its aim, met or missed (benchmarks/targets.py). Ratios compare work measured
in the same run; absolute seconds depend on the machine and on what else runs on it, and on how
fast it hands out new memory, which the run reads before and after its parts
(benchmarks/fresh_memory.py).

  .venv/bin/python benchmarks/run_all.py [--quick] [--only throughput,freshness,growth,memory]
                                         [--backlogs 100000,200000,1000000] [--no-prune]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import duckdb  # noqa: E402
import targets  # noqa: E402
from by_slice import cycles_by_slice, describe_cycles, describe_latency, latency_by_slice  # noqa: E402
from fresh_memory import fresh_memory  # noqa: E402
from mappings import KINDS, resident_by_kind  # noqa: E402
from throughput import consume_all, free_port, simulate_at_least  # noqa: E402

import pipelines.local.microbatch as microbatch  # noqa: E402
from pipelines.kafka.local_broker import ensure_topics, start_broker, stop_broker  # noqa: E402
from pipelines.kafka.offsets import BrokerUnavailable  # noqa: E402
from pipelines.kafka.settings import KafkaSettings  # noqa: E402
from pipelines.kafka.simulator import generate_customer_events, send_simulated, to_messages  # noqa: E402
from pipelines.local.microbatch import MicroBatchRunner, RunConfig  # noqa: E402
from pipelines.ops import logs  # noqa: E402
from pipelines.ops.startup_heap import freeze_startup_objects  # noqa: E402
from pipelines.storage.replica import lake_dir  # noqa: E402
from pipelines.storage.store import Store  # noqa: E402


@dataclass(frozen=True)
class Scale:
    throughput_events: int
    freshness: tuple[tuple[float, float], ...]  # (events/s, seconds)
    growth_base_events: int  # real events landed through the pipeline
    growth_store_events: int  # the store is grown to this many events (and journeys) by copying
    whale_events: int
    backlogs: tuple[int, ...]


FULL = Scale(200_000, ((2000, 60), (5000, 30)), 100_000, 1_000_000, 200_000, (100_000, 200_000, 1_000_000))
QUICK = Scale(20_000, ((2000, 15),), 20_000, 100_000, 10_000, (10_000, 20_000))
CXJ = [sys.executable, "-m", "pipelines.cli"]
RUN_TAG = f"{os.getpid()}-"  # this run's temporary folders (removed at the end)
START = datetime(2026, 6, 1, tzinfo=timezone.utc)
FRESH_MEMORY_MB = 256  # new memory timed before and after the parts (0.1-0.9 s here)


BENCH_STARTED = time.monotonic()


def _fresh_memory_mb_per_s(when: str) -> int:
    """How fast a new process fills new memory now (benchmarks/fresh_memory.py): on this kind
    of machine it varied sevenfold from one minute to the next, and the grown store's batch
    with it, so the results say what it was."""
    reading = fresh_memory(FRESH_MEMORY_MB)
    progress(f"new memory at the {when}: {reading.mb_per_s:,.0f} MB/s ({reading.mb} MB in {reading.seconds:.2f} s)")
    return round(reading.mb_per_s)


def progress(step: str) -> None:
    """One line per step of a part, with the seconds since the call began: a full call runs for
    about ten minutes, and a part's result line comes only when the part is done."""
    print(f"  [{time.monotonic() - BENCH_STARTED:4.0f} s] {step}", flush=True)


def topics_named(prefix: str) -> dict[str, str]:
    return {"tickets": f"{prefix}.tickets", "chats": f"{prefix}.chats", "surveys": f"{prefix}.surveys"}


def kafka_args(settings: KafkaSettings, topics: dict[str, str]) -> list[str]:
    return ["--bootstrap-servers", settings.bootstrap_servers, "--topic-tickets", topics["tickets"],
            "--topic-chats", topics["chats"], "--topic-surveys", topics["surveys"]]


@dataclass
class Landed:
    wall_s: float  # wall-clock seconds of run --once
    cpu_s: float  # CPU seconds of this process meanwhile (Beam and DuckDB run in it; the broker does not)
    batches: list
    retries: int = 0
    close_s: float = 0.0  # closing the runner and the store after it (the store's last checkpoint)


def land(db: Path, settings: KafkaSettings, topics: dict[str, str], max_batch_events: int = 50_000) -> Landed:
    """run --once in this process. On a machine this busy the local broker sometimes misses the
    offset look-up's 5 s deadline: the run is then resumed (from the landed offsets, as a
    restart would) and the retry is counted."""
    config = RunConfig(db=db, settings=settings, topics=topics, max_batch_events=max_batch_events)
    out = Landed(0.0, 0.0, [])
    for _attempt in range(10):
        store = Store(db)
        runner = MicroBatchRunner(config, store)
        freeze_startup_objects()  # as `cxj run` does before its first batch
        started, cpu = time.perf_counter(), time.process_time()
        try:
            out.batches += runner.run_once()
            out.wall_s += time.perf_counter() - started
            out.cpu_s += time.process_time() - cpu
            return out
        except BrokerUnavailable as exc:
            out.wall_s += time.perf_counter() - started
            out.cpu_s += time.process_time() - cpu
            out.retries += 1
            print(f"  (broker too slow to answer, resuming: {exc})", flush=True)
        finally:
            closing = time.perf_counter()
            try:
                runner.close()
            finally:
                store.close()  # publishes what is pending and checkpoints: part of what a run costs
                out.close_s += time.perf_counter() - closing
    raise RuntimeError("the broker kept timing out")


# ---------------------------------------------------------------------------------- throughput

def throughput(settings: KafkaSettings, events: int) -> dict[str, Any]:
    topics = topics_named("tp")
    ensure_topics(settings, topics.values(), 3)
    progress(f"throughput: producing {events:,} events")
    messages = simulate_at_least(events, 1)
    send_simulated(messages, settings, topics)
    progress("throughput: kafka-python alone consumes them")
    count, seconds = consume_all(settings, list(topics.values()))
    baseline = count / seconds
    work = Path(tempfile.mkdtemp(prefix=f"cxj-tp-{RUN_TAG}"))
    progress("throughput: run --once lands them")
    landed = land(work / "tp.duckdb", settings, topics)
    # end to end, as benchmarks/throughput.py: the run and closing the store (its last checkpoint)
    wall, batches = landed.wall_s + landed.close_s, landed.batches
    consumed = sum(b.consumed for b in batches)
    with duckdb.connect(str(work / "tp.duckdb"), read_only=True) as con:
        ingest, assemble, land_s, duration = con.execute(
            "SELECT sum(ingest_s), sum(assemble_s), sum(land_s), sum(duration_s) FROM pipeline_batches").fetchone()
    rate = consumed / wall
    out = {"events": consumed, "kafka_python_records_per_s": round(baseline), "pipeline_records_per_s": round(rate),
           "ratio": round(rate / baseline, 3), "batches": len(batches),
           "stage_seconds": {"ingest": round(ingest, 2), "assemble": round(assemble, 2), "land": round(land_s, 2),
                             "outside_batches": round(landed.wall_s - duration, 2), "close": round(landed.close_s, 2)},
           "us_per_event_wall": round(wall / consumed * 1e6, 1), "us_per_event_cpu": round(landed.cpu_s / consumed * 1e6, 1),
           "broker_retries": landed.retries}
    print(f"throughput: kafka-python {baseline:,.0f} rec/s, pipeline {rate:,.0f} rec/s ({consumed:,} events, "
          f"{len(batches)} batches): ratio {out['ratio']:.3f}; stages {out['stage_seconds']}", flush=True)
    return out


# ---------------------------------------------------------------------------------- freshness

def _watch_replica(db: Path, stop: threading.Event, seen: dict[int, float], landed: list[int]) -> None:
    """When each batch first becomes visible to readers (polled every 0.2 s), and in
    ``landed[0]`` the offsets readers see landed so far.

    One reader connection kept open, as a dashboard keeps it: every statement on it sees the
    latest publish. Opening a reader per poll (extensions, the lake's attach, the safety
    settings) cost this process more CPU than the pipeline itself used, on the same two cores,
    and so slowed what it measured."""
    from pipelines.storage.reader import open_reader

    con = None
    while not stop.wait(0.2):
        try:
            if con is None:
                con, _source = open_reader(db, wait_s=0.5)
            now = time.time()
            for (batch_id,) in con.execute("SELECT batch_id FROM pipeline_batches").fetchall():
                seen.setdefault(int(batch_id), now)
            landed[0] = int(con.execute("SELECT coalesce(sum(next_offset), 0) FROM pipeline_offsets").fetchone()[0])
        except Exception:
            if con is not None:
                con.close()
            con = None
    if con is not None:
        con.close()


FRESHNESS_SLICE_S = 120  # latency is also reported by slice of the load of this many seconds


def freshness(settings: KafkaSettings, rate: float, seconds: float) -> dict[str, Any]:
    progress(f"freshness: {rate:,.0f} events/s offered for {seconds:.0f} s to run --follow")
    topics = topics_named(f"fresh{int(rate)}")
    ensure_topics(settings, topics.values(), 3)
    work = Path(tempfile.mkdtemp(prefix=f"cxj-fresh-{RUN_TAG}"))
    db = work / "fresh.duckdb"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    run = subprocess.Popen([*CXJ, "run", "--follow", "--quiet", "--db", str(db), "--poll-interval", "0.2s",
                            *kafka_args(settings, topics)], cwd=ROOT, env=env)
    customers = int(rate * seconds / 11.5) + 1  # the simulator writes ~11.5 events per customer
    start = (datetime.now(timezone.utc) - timedelta(days=90)).isoformat()
    seen: dict[int, float] = {}
    landed = [0]
    stop = threading.Event()
    watcher = threading.Thread(target=_watch_replica, args=(db, stop, seen, landed), daemon=True)
    run_cpu_s: Optional[float] = None
    load_before = os.getloadavg()
    harness_cpu = resource.getrusage(resource.RUSAGE_SELF)
    caught_up_s: Optional[float] = None
    try:
        deadline = time.time() + 60
        while not db.exists() and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(2)  # the first (empty) cycles
        watcher.start()
        began = time.time()
        subprocess.run([*CXJ, "simulate", "--quiet", "--customers", str(customers), "--seed", "5", "--start", start,
                        "--rate", str(rate), *kafka_args(settings, topics)], cwd=ROOT, env=env, check=True)
        load_s = time.time() - began
        load_during = os.getloadavg()
        sent = _end_offsets(settings, topics)
        load_ended = time.time()
        deadline = load_ended + 180
        while time.time() < deadline and landed[0] < sent:
            time.sleep(0.5)
        if landed[0] >= sent:
            caught_up_s = round(time.time() - load_ended, 1)
        time.sleep(1.0)  # the replica's last publish
    finally:
        stop.set()
        run.send_signal(signal.SIGTERM)
        run_cpu_s = _wait_cpu_s(run, 120)
    harness_now = resource.getrusage(resource.RUSAGE_SELF)
    harness_cpu_s = harness_now.ru_utime + harness_now.ru_stime - harness_cpu.ru_utime - harness_cpu.ru_stime
    with duckdb.connect(str(db), read_only=True) as con:
        p50, p95, p99, worst, events = con.execute(
            """SELECT quantile_cont(l, 0.5), quantile_cont(l, 0.95), quantile_cont(l, 0.99), max(l), count(*)
               FROM (SELECT epoch(landed_at) - epoch(kafka_timestamp) AS l FROM events)""").fetchone()
        # the same figures by slice of the load: a long run shows whether latency holds or grows,
        # and where its cycles' time goes meanwhile (`freshness.py --seconds 1500`)
        latency_slices = latency_by_slice(con, FRESHNESS_SLICE_S)
        cycle_slices = cycles_by_slice(con, FRESHNESS_SLICE_S)
        finished = dict(con.execute("SELECT batch_id, epoch(finished_at) FROM pipeline_batches").fetchall())
        cycle = con.execute("SELECT median(duration_s), count(*) FROM pipeline_batches").fetchone()
    lag_by_batch = {b: seen[b] - finished[b] for b in finished if b in seen}
    lags = sorted(lag_by_batch.values())
    # the batch readers saw latest, named so that a late one can be matched with the replica's
    # maintenance, every 10 and 50 publishes (docs/performance.md, "A replica publish seen late")
    latest_seen = max(lag_by_batch, key=lag_by_batch.__getitem__) if lag_by_batch else None
    replica = {"batches_seen": len(lags), "p50": _q(lags, 0.5), "p99": _q(lags, 0.99), "max": round(lags[-1], 2) if lags else None,
               "latest_seen_batch": latest_seen}
    out = {"offered_per_s": rate, "load_seconds": round(load_s, 1), "sent": sent, "events": events,
           "batches": cycle[1], "median_batch_s": round(cycle[0] or 0, 2),
           "latency_s": {"p50": round(p50, 2), "p95": round(p95, 2), "p99": round(p99, 2), "max": round(worst, 2)},
           "replica_lag_s": replica,
           "latency_s_by_slice": latency_slices,
           "cycles_by_slice": cycle_slices,
           "caught_up_after_load_s": caught_up_s,  # None: still behind 180 s after the load ended
           "run_cpu_s": None if run_cpu_s is None else round(run_cpu_s, 1),  # CPU of the `run --follow` process
           # CPU of this process meanwhile (its replica watcher): it shares the cores with what it
           # measures, so a figure near run_cpu_s means the benchmark distorts its own result
           "harness_cpu_s": round(harness_cpu_s, 1),
           "load_average": {"before": round(load_before[0], 1), "end_of_load": round(load_during[0], 1)}}
    print(f"freshness @ {rate:.0f}/s: {events:,} events ({sent:,} records sent) in {cycle[1]} batches (median "
          f"{out['median_batch_s']}s); landed_at - Kafka timestamp p50 {p50:.2f}s p95 {p95:.2f}s p99 {p99:.2f}s "
          f"max {worst:.2f}s; replica behind by p50 {replica['p50']}s p99 {replica['p99']}s max {replica['max']}s "
          f"(batch {latest_seen} of {cycle[1]}); "
          f"caught up {caught_up_s}s after the load; run --follow used {out['run_cpu_s']} CPU s, this benchmark "
          f"{out['harness_cpu_s']} CPU s; load average "
          f"{load_before[0]:.1f} before, {load_during[0]:.1f} at the end of the load", flush=True)
    if len(latency_slices) > 1:
        print("  by slice of the load: " + describe_latency(latency_slices, FRESHNESS_SLICE_S), flush=True)
        print("  cycles by slice: " + describe_cycles(cycle_slices, FRESHNESS_SLICE_S), flush=True)
    return out


def _wait_cpu_s(process: subprocess.Popen, timeout_s: float) -> Optional[float]:
    """Waits for ``process`` and returns its CPU seconds (user + system, threads included) from
    the kernel's accounting of the child; kills it after ``timeout_s``."""
    deadline = time.time() + timeout_s
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            process.returncode = os.waitstatus_to_exitcode(status)
            return usage.ru_utime + usage.ru_stime
        if time.time() > deadline:
            process.kill()
            _, status, usage = os.wait4(process.pid, 0)
            process.returncode = os.waitstatus_to_exitcode(status)
            return usage.ru_utime + usage.ru_stime
        time.sleep(0.1)


def _q(values: list[float], q: float) -> Optional[float]:
    return round(values[min(len(values) - 1, int(q * len(values)))], 2) if values else None


def _end_offsets(settings: KafkaSettings, topics: dict[str, str]) -> int:
    from pipelines.kafka.offsets import OffsetReader

    reader = OffsetReader(settings)
    try:
        partitions, _ = reader.partitions(topics.values())
        return sum(reader.bounds(partitions)[1].values())
    finally:
        reader.close()


# ---------------------------------------------------------------------------------- growth

def whale_events(customer: str, events: int, end: datetime) -> list[dict[str, Any]]:
    """One customer with ``events`` events: tickets of 500 messages each, 12 days apart (longer
    than every journey rule looks back, so each is a journey of its own), ending at ``end``
    (journeys that ended long ago, as a long-lived account accumulates). 400 tickets reach back
    13 years: further apart, the oldest would predate 2000 and be dead-lettered (as 40 days
    apart did: 120,005 of 200,000 were landed)."""
    per_ticket = 500
    tickets = max(1, events // per_ticket)
    docs: list[dict[str, Any]] = []
    for t in range(tickets):
        t0 = end - timedelta(days=12 * (tickets - t))
        tid = f"WT{t}"
        docs.append({"event_type": "ticket.created", "ticket_id": tid, "channel": "email", "_at": t0})
        docs.append({"event_type": "ticket.assigned", "ticket_id": tid, "handler_type": "agent", "agent_id": "ag1",
                     "team": "billing", "_at": t0 + timedelta(minutes=1)})
        for m in range(per_ticket - 3):
            docs.append({"event_type": "ticket.message", "ticket_id": tid, "channel": "email",
                         "author": "customer" if m % 2 else "agent", "_at": t0 + timedelta(minutes=2 + m)})
        docs.append({"event_type": "ticket.status_changed", "ticket_id": tid, "status": "solved",
                     "_at": t0 + timedelta(minutes=per_ticket + 5)})
    return [_doc(customer, f"{customer}-{i}", d) for i, d in enumerate(docs)]


def five_events(customer: str, prefix: str, at: datetime) -> list[dict[str, Any]]:
    """A new ticket of ``customer`` opened at ``at``, answered and solved: 5 events, ids from ``prefix``."""
    ticket = f"{prefix}-T"
    return [_doc(customer, f"{prefix}-{i}", {**f, "ticket_id": ticket, "_at": at + timedelta(minutes=i)}) for i, f in enumerate([
        {"event_type": "ticket.created", "channel": "web"},
        {"event_type": "ticket.assigned", "handler_type": "agent", "agent_id": "ag2", "team": "billing"},
        {"event_type": "ticket.message", "channel": "web", "author": "agent"},
        {"event_type": "ticket.message", "channel": "web", "author": "customer"},
        {"event_type": "ticket.status_changed", "status": "solved"},
    ])]


def _median_landing(landings: list[Landed]) -> Landed:
    """The landing of median wall time (the lower middle one of an even count)."""
    return sorted(landings, key=lambda x: x.wall_s)[(len(landings) - 1) // 2]


def _doc(customer: str, event_id: str, fields: dict[str, Any]) -> dict[str, Any]:
    doc = {"event_id": event_id, "schema_version": 1, "customer_id": customer,
           "occurred_at": fields["_at"].isoformat().replace("+00:00", "Z")}
    doc.update({k: v for k, v in fields.items() if k != "_at"})
    return doc


def send_docs(settings: KafkaSettings, topics: dict[str, str], docs: list[dict[str, Any]]) -> None:
    send_simulated(to_messages(docs, 0, 0.0, 0.0, 0.0), settings, topics)


def grow_store(db: Path, target_events: int) -> dict[str, int]:
    """Copies the landed rows of other customers until events and journeys each hold at least
    ``target_events`` rows; then the read replica is rebuilt on the next start. The batches
    measured afterwards touch only the original customers, whose rows are real.

    A copy's customer and journey ids carry the copy's number as a suffix. Its event ids are a
    hash of the original id and that number, as random as the UUIDs producers send: ids that
    share long prefixes would flatter anything that indexes or compresses them (the suffix
    ``#`` only marks a copy, so copies are never copied again).

    Each copy is landed by batches of its own, as in a store the pipeline filled: its rows carry
    the original batch ids moved past the previous copy's (with their pipeline_batches rows), so
    batch ids grow along every table. Copies that kept the original ids would give every row
    group the same few batch ids, which no landed store has."""
    with duckdb.connect(str(db)) as con:
        base_events = con.execute("SELECT count(*) FROM events").fetchone()[0]
        base_journeys = con.execute("SELECT count(*) FROM journeys").fetchone()[0]
        base_batches = con.execute("SELECT coalesce(max(batch_id), 0) FROM pipeline_batches").fetchone()[0]
        copies = max(0, -(-target_events // max(1, min(base_events, base_journeys))) - 1)
        for k in range(1, copies + 1):
            s = f"'#{k}'"
            copied_id = f"md5(event_id || {s}) || '#'"
            batch = f"batch_id + {k * base_batches} AS batch_id"
            con.execute(f"INSERT INTO events SELECT * REPLACE ({copied_id} AS event_id, customer_id || {s} AS customer_id, "
                        f"{batch}) FROM events WHERE NOT contains(event_id, '#')")
            for table in ("journeys", "journey_metrics"):
                con.execute(f"INSERT INTO {table} SELECT * REPLACE (journey_id || {s} AS journey_id, customer_id || {s} AS customer_id, "
                            f"{batch}) FROM {table} WHERE NOT contains(journey_id, '#')")
            con.execute(f"INSERT INTO journey_events SELECT * REPLACE ({copied_id} AS event_id, journey_id || {s} AS journey_id, "
                        f"customer_id || {s} AS customer_id, {batch}) FROM journey_events WHERE NOT contains(event_id, '#')")
            con.execute(f"INSERT INTO pipeline_batches SELECT * REPLACE ({batch}) FROM pipeline_batches "
                        f"WHERE batch_id <= {base_batches}")
        sizes = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("events", "journeys", "journey_events")}
        sizes["copies"] = copies
        con.execute("CHECKPOINT")
    shutil.rmtree(lake_dir(db), ignore_errors=True)  # rebuilt from the grown database on the next start
    return sizes


def _stages(db: Path, landed: Landed, batch_ids: tuple[int, ...] = ()) -> dict[str, float]:
    """Seconds of the landed batches by stage; "outside" is the rest of the wall time (planning,
    offset look-ups, the replica publish after the commit)."""
    ids = batch_ids or tuple(b.batch_id for b in landed.batches)
    with duckdb.connect(str(db), read_only=True) as con:
        duration, ingest, assemble, land_s = con.execute(
            f"SELECT sum(duration_s), sum(ingest_s), sum(assemble_s), sum(land_s) FROM pipeline_batches "
            f"WHERE batch_id IN ({', '.join(str(int(i)) for i in ids)})").fetchone()
    return {"ingest": round(ingest, 2), "assemble": round(assemble, 2), "land": round(land_s, 2),
            "other_in_batch": round(duration - ingest - assemble - land_s, 2), "outside_batch": round(landed.wall_s - duration, 2)}


def _rss_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    return 0


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


@dataclass
class MemoryTrace:
    """Resident memory of one `cxj run --once` over a backlog, read every 20 ms.

    ``peak_mb`` is the largest sum of both processes (at least the run's own high-water mark);
    ``run_peak_mb`` and ``reader_peak_mb`` are each process's own peak; ``by_tenth_mb`` is the
    largest sum in each tenth of the run's wall time: whether memory still rises late in a
    backlog (the writer's DuckDB cache filling up to its limit) or stays level.
    ``run_by_tenth_mb`` and ``reader_by_tenth_mb`` are each process's own, since the two grow
    for different reasons (the run's DuckDB cache and landings, the reader's batches read ahead).
    ``run_by_kind_by_tenth_mb``: the run's process by kind of mapping (benchmarks/mappings.py),
    read every ``MAPPINGS_EVERY_S``, the largest of each tenth (None: no reading fell in it, in a
    run of a few seconds): DuckDB's blocks apart from glibc's heap and arenas, which keep
    growing slowly over a long backlog."""

    peak_mb: float
    run_peak_mb: float
    reader_peak_mb: float
    by_tenth_mb: list[float]
    run_by_tenth_mb: list[float]
    reader_by_tenth_mb: list[float]
    run_by_kind_by_tenth_mb: dict[str, list[Optional[float]]]


def _tenth(at: float, wall: float) -> int:
    """Which tenth (0-9) of a run lasting ``wall`` seconds the moment ``at`` falls in."""
    return min(9, int(10 * at / wall))


MAPPINGS_EVERY_S = 0.2  # reading smaps takes a few milliseconds; the resident sizes are read every 20 ms


def memory_trace(db: Path, settings: KafkaSettings, topics: dict[str, str]) -> MemoryTrace:
    """Resident memory of a `cxj run --once` child and of the process that reads its next batch
    ahead, while it lands the topics' backlog into ``db``.

    Not the child's rusage: Linux carries the resident high-water mark of the address space a
    process had before exec into ru_maxrss, and subprocess starts children with vfork, whose
    address space before exec is this (large) benchmark process. Every backlog then "peaked" at
    the benchmark's own size (2,461 MB for 100k and 200k events alike)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    started = time.monotonic()
    child = subprocess.Popen([*CXJ, "run", "--once", "--quiet", "--db", str(db), *kafka_args(settings, topics)],
                             cwd=ROOT, env=env)
    samples: list[tuple[float, int, int]] = []  # (seconds since start, run's kB, reader's kB)
    high_water_kb = 0
    by_kind: list[tuple[float, dict[str, float]]] = []  # (seconds since start, the run's MB by kind)
    while child.poll() is None:
        at = time.monotonic() - started  # one moment for this round's readings
        try:
            if not by_kind or at - by_kind[-1][0] >= MAPPINGS_EVERY_S:
                by_kind.append((at, resident_by_kind(child.pid)))
            run_kb = _rss_kb(child.pid, "VmRSS:")
            reader_kb = sum(_rss_kb(c, "VmRSS:") for c in _children(child.pid))
            high_water_kb = max(high_water_kb, _rss_kb(child.pid, "VmHWM:"))
            samples.append((at, run_kb, reader_kb))
        except (OSError, ValueError, IndexError):  # exiting: its memory is gone already
            pass
        time.sleep(0.02)
    if child.returncode != 0:
        raise RuntimeError(f"cxj run --once exited {child.returncode}")
    wall = max(time.monotonic() - started, 1e-9)
    tenths, run_tenths, reader_tenths = [0] * 10, [0] * 10, [0] * 10
    for at, run_kb, reader_kb in samples:
        i = _tenth(at, wall)
        tenths[i] = max(tenths[i], run_kb + reader_kb)
        run_tenths[i], reader_tenths[i] = max(run_tenths[i], run_kb), max(reader_tenths[i], reader_kb)
    kind_tenths: dict[str, list[Optional[float]]] = {kind: [None] * 10 for kind in KINDS}
    for at, sizes in by_kind:
        i = _tenth(at, wall)
        for kind, size in sizes.items():
            kind_tenths[kind][i] = max(kind_tenths[kind][i] or 0.0, size)
    together_kb = max([run_kb + reader_kb for _, run_kb, reader_kb in samples], default=0)

    def mb(kb: int) -> float:
        return round(kb / 1024, 1)

    return MemoryTrace(peak_mb=mb(max(together_kb, high_water_kb)),
                       run_peak_mb=mb(max([r for _, r, _ in samples] + [high_water_kb])),
                       reader_peak_mb=mb(max([k for _, _, k in samples], default=0)),
                       by_tenth_mb=[mb(kb) for kb in tenths], run_by_tenth_mb=[mb(kb) for kb in run_tenths],
                       reader_by_tenth_mb=[mb(kb) for kb in reader_tenths], run_by_kind_by_tenth_mb=kind_tenths)


GROWTH_BATCH_EVENTS = 5000
FIVE_EVENT_ROUNDS = 3  # landings of the 5-event batch; the median is reported
# landings of the 5,000-event batch on each store, the store restored before each: one landing
# varied by a third from call to call on a noisy machine (0.9-1.4 s on the empty store); the
# medians are compared, and the stores' landings of each round (land_rounds_side_by_side)
GROWTH_ROUNDS = 5
# events of the landed history delivered again beside the growth batch (1% of it): producers
# and consumers that retry deliver copies, and a batch with any has to read the landed rows
REDELIVERED_EVENTS = 50


def growth_events(base_events: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(base, batch): simulated events of about ``base_events`` in all (the simulator writes
    ~11.5 per customer), split into what is landed first and the last 5,000, the measured batch."""
    events = generate_customer_events(max(10, int(base_events / 11.5)), 7, START)
    return events[:-GROWTH_BATCH_EVENTS], events[-GROWTH_BATCH_EVENTS:]


def land_and_grow(db: Path, settings: KafkaSettings, topics: dict[str, str], base: list[dict[str, Any]],
                  target_events: int, keep_base: Optional[Path] = None) -> dict[str, int]:
    """Lands ``base`` for real through ``topics``, grows the store by copying (``grow_store``) and
    opens it once, so the replica's rebuild is not part of any batch measured after.
    ``keep_base``: a copy of the database as it was before growing is kept there (opened once
    too), so the same batch can be measured on a store that holds the customers' history only."""
    progress(f"growth: landing {len(base):,} real events")
    send_docs(settings, topics, base)
    land(db, settings, topics)
    if keep_base is not None:
        shutil.copyfile(db, keep_base)  # (its replica is rebuilt when it is opened)
        with Store(keep_base):
            pass
    progress(f"growth: growing the store to {target_events:,} events and journeys by copying them")
    sizes = grow_store(db, target_events)
    progress("growth: opening the grown store once (its replica is built)")
    with Store(db):
        pass
    return sizes


def _copy_store(source: Path, target: Path) -> None:
    """``source`` and its read replica, as they are, at ``target`` (whose own are replaced)."""
    shutil.copyfile(source, target)
    shutil.rmtree(lake_dir(target), ignore_errors=True)
    if lake_dir(source).exists():
        shutil.copytree(lake_dir(source), lake_dir(target))


def _remove_store(db: Path) -> None:
    db.unlink(missing_ok=True)
    shutil.rmtree(lake_dir(db), ignore_errors=True)


def land_rounds(db: Path, settings: KafkaSettings, topics: dict[str, str]) -> list[Landed]:
    """``GROWTH_ROUNDS`` landings of the same records on ``db`` as it is now (``land_rounds_side_by_side``
    with one store)."""
    return land_rounds_side_by_side([(db, topics)], settings)[0]


def land_rounds_side_by_side(stores: list[tuple[Path, dict[str, str]]], settings: KafkaSettings) -> list[list[Landed]]:
    """``GROWTH_ROUNDS`` landings on each store of ``stores`` (a database, as it is now or none
    yet, and the topics whose records it lands), one store after the other within each round, so
    that a machine slower in one minute than in the next slows every store's landing of that
    round alike (the stores' ratios are taken round by round). Each store and its replica are
    kept aside and put back before every landing after the first, so each lands the records
    afresh; the last landing's result stays, as after a single one. Written pages are flushed
    to disk before each landing: a grown store's copy is gigabytes, and its writeback would
    otherwise compete with the next landing, whichever store that is."""
    kept: list[tuple[Path, bool]] = []
    for db, _ in stores:
        backup, existed = db.with_name(db.name + ".before"), db.exists()
        if existed:
            _copy_store(db, backup)
        kept.append((backup, existed))
    landings: list[list[Landed]] = [[] for _ in stores]
    for round_no in range(GROWTH_ROUNDS):
        side_by_side = f", the batch on {len(stores)} stores one after the other" if len(stores) > 1 else ""
        progress(f"growth: round {round_no + 1} of {GROWTH_ROUNDS}{side_by_side}")
        for index, ((db, topics), (backup, existed)) in enumerate(zip(stores, kept)):
            if round_no:
                _remove_store(db)
                if existed:
                    _copy_store(backup, db)
            os.sync()
            landings[index].append(land(db, settings, topics))
    for backup, _ in kept:
        _remove_store(backup)
    return landings


def _round_figures(rounds: list[Landed], baseline: Optional[list[Landed]] = None) -> dict[str, Any]:
    """The median landing of ``rounds`` (wall, CPU and close seconds) and every round's wall;
    with ``baseline`` (the empty store's rounds, landed side by side), the ratio of the medians
    and the median of the rounds' ratios."""
    median = _median_landing(rounds)
    figures: dict[str, Any] = {"wall_s": round(median.wall_s, 2), "cpu_s": round(median.cpu_s, 2),
                               "close_s": round(median.close_s, 2), "rounds_wall_s": [round(x.wall_s, 2) for x in rounds]}
    if baseline is not None:
        figures["ratio_wall"] = round(median.wall_s / _median_landing(baseline).wall_s, 2)
        figures["ratio_wall_by_round"] = round(_ratio_by_round(rounds, baseline), 2)
    return figures


def _ratio_by_round(landings: list[Landed], baseline: list[Landed]) -> float:
    """The median over rounds of one store's landing against the baseline store's landing of the
    same round (``land_rounds_side_by_side``)."""
    return statistics.median(x.wall_s / b.wall_s for x, b in zip(landings, baseline))


def growth(settings: KafkaSettings, scale: Scale) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix=f"cxj-growth-{RUN_TAG}"))
    base, batch = growth_events(scale.growth_base_events)
    # a grown store: base events landed for real, copied up to the target, then the same batch
    big_topics = topics_named("g-big")
    ensure_topics(settings, big_topics.values(), 3)
    big = work / "big.duckdb"
    history_only = work / "history-only.duckdb"
    sizes = land_and_grow(big, settings, big_topics, base, scale.growth_store_events, keep_base=history_only)
    # the same batch with REDELIVERED_EVENTS landed events delivered again, on a copy of the grown
    # store: their topic sorts after the one they landed from, so every copy loses to the landed
    # row (a duplicate delivery, as a retried delivery is)
    redelivered_db = work / "redelivered.duckdb"
    _copy_store(big, redelivered_db)
    redelivered_topics = topics_named("g-redelivered")
    ensure_topics(settings, redelivered_topics.values(), 3)
    send_docs(settings, redelivered_topics, batch + random.Random(7).sample(base, REDELIVERED_EVENTS))
    progress(f"growth: the batch with {REDELIVERED_EVENTS} landed events delivered again, on a copy of the grown store")
    redelivered_rounds = land_rounds(redelivered_db, settings, redelivered_topics)
    redelivered = _median_landing(redelivered_rounds)
    redelivered_duplicates = sum(b.duplicates for b in redelivered_rounds[-1].batches)
    _remove_store(redelivered_db)
    # the same 5,000 events on an empty store, on the grown store, and on the store before it was
    # grown (the customers' history, without the bulk): what the grown store costs beyond the
    # last is what its size costs; what the last costs beyond the empty store is what the batch's
    # returning customers cost on any store. And once more on a copy of the grown store, from
    # customers it has never seen (nothing of theirs to read, settle or revise): what its size
    # alone costs. Round by round, the five side by side
    newcomers_db, spread_db = work / "newcomers.duckdb", work / "spread.duckdb"
    _copy_store(big, newcomers_db)
    _copy_store(big, spread_db)
    empty_topics, history_topics, newcomer_topics = topics_named("g-empty"), topics_named("g-history"), topics_named("g-newcomers")
    # and the same batch for returning customers whose rows lie all over the grown store: each
    # customer is one of the copies (a copy per customer, of any generation), so the batch's
    # customers have rows in every row group (what reading by row id ranges cannot skip)
    spread_topics = topics_named("g-spread")
    for topics in (empty_topics, history_topics, newcomer_topics, spread_topics):
        ensure_topics(settings, topics.values(), 3)
    for topics in (empty_topics, big_topics, history_topics):
        send_docs(settings, topics, batch)
    send_docs(settings, newcomer_topics, [{**d, "customer_id": f"{d['customer_id']}-newcomer",
                                           "event_id": f"{d['event_id']}-newcomer"} for d in batch])
    generations = sizes["copies"]
    send_docs(settings, spread_topics, [
        {**d, "customer_id": f"{d['customer_id']}#{1 + zlib.crc32(d['customer_id'].encode()) % generations}",
         "event_id": f"{d['event_id']}-returning"} for d in batch] if generations else [])
    empty_rounds, grown_rounds, history_rounds, newcomer_rounds, spread_rounds = land_rounds_side_by_side(
        [(work / "empty.duckdb", empty_topics), (big, big_topics), (history_only, history_topics),
         (newcomers_db, newcomer_topics), (spread_db, spread_topics)], settings)
    empty, grown, history, newcomers, spread = (
        _median_landing(rounds) for rounds in (empty_rounds, grown_rounds, history_rounds, newcomer_rounds, spread_rounds))
    # a customer with a long history, then 5 new events for them
    progress(f"growth: a customer with {scale.whale_events:,} events, then 5 more, {FIVE_EVENT_ROUNDS} times")
    whale = whale_events("whale-1", scale.whale_events, START - timedelta(days=30))
    send_docs(settings, big_topics, whale)
    whale_landing = land(big, settings, big_topics)
    last = datetime.fromisoformat(whale[-1]["occurred_at"].replace("Z", "+00:00"))
    with duckdb.connect(str(big), read_only=True) as con:
        whale_stored = con.execute("SELECT count(*) FROM events WHERE customer_id = 'whale-1'").fetchone()[0]
    # 5 new events for them, FIVE_EVENT_ROUNDS times (one landing varies by tenths of a second
    # from run to run: the median is reported), each round beside the same 5 events for a new
    # customer without history: what the 5 events cost by themselves
    small_topics = topics_named("g-five")
    ensure_topics(settings, small_topics.values(), 3)
    five_landings: list[Landed] = []
    five_fresh_landings: list[Landed] = []
    for round_no in range(FIVE_EVENT_ROUNDS):
        five = five_events("whale-1", f"whale-1-new-{round_no}", last + timedelta(days=20 + round_no))
        send_docs(settings, big_topics, five)
        five_landings.append(land(big, settings, big_topics))
        send_docs(settings, small_topics, [{**d, "customer_id": f"fresh-{round_no}", "event_id": d["event_id"] + "-fresh"}
                                           for d in five])
        five_fresh_landings.append(land(big, settings, small_topics))
    five_landing = _median_landing(five_landings)
    # (by stage: the last of the landings on each store, which is what its pipeline_batches row holds)
    stages = {"empty": _stages(work / "empty.duckdb", empty), "grown": _stages(big, grown, (grown.batches[0].batch_id,)),
              "returning": _stages(spread_db, spread, (spread.batches[0].batch_id,)) if spread.batches else {},
              "newcomers": _stages(newcomers_db, newcomers, (newcomers.batches[0].batch_id,))}
    _remove_store(newcomers_db)
    _remove_store(spread_db)
    with duckdb.connect(str(big), read_only=True) as con:
        five_stage = con.execute("SELECT duration_s, ingest_s, assemble_s, land_s FROM pipeline_batches WHERE batch_id = ?",
                                 [five_landing.batches[0].batch_id]).fetchone()
    out = {
        "batch_events": sum(b.consumed for b in grown.batches),
        "grown_store": sizes,
        "empty_store": _round_figures(empty_rounds),
        "grown_store_batch": _round_figures(grown_rounds),
        "ratio_wall": round(grown.wall_s / empty.wall_s, 2), "ratio_cpu": round(grown.cpu_s / empty.cpu_s, 2),
        "ratio_wall_by_round": round(_ratio_by_round(grown_rounds, empty_rounds), 2),
        "grown_store_batch_with_redeliveries": {
            "redelivered": REDELIVERED_EVENTS, "duplicates": redelivered_duplicates, **_round_figures(redelivered_rounds),
            "over_grown_store_batch": round(redelivered.wall_s / grown.wall_s, 2)},
        "history_only_store_batch": {**_round_figures(history_rounds, empty_rounds),
                                     "grown_over_this_wall": round(grown.wall_s / history.wall_s, 2)},
        "returning_customers_batch": _round_figures(spread_rounds, empty_rounds),
        "new_customers_batch": _round_figures(newcomer_rounds, empty_rounds),
        "batch_stages_s": stages,
        "whale_stored_events": whale_stored, "whale_history_landing_s": round(whale_landing.wall_s, 1),
        "five_event_batch": {"wall_s": round(five_landing.wall_s, 2), "cpu_s": round(five_landing.cpu_s, 2),
                             "close_s": round(five_landing.close_s, 2),
                             "stages_s": dict(zip(("duration", "ingest", "assemble", "land"), (round(x, 2) for x in five_stage))),
                             "rounds_wall_s": [round(x.wall_s, 2) for x in five_landings]},
        "five_events_no_history": _round_figures(five_fresh_landings),
        "broker_retries": empty.retries + grown.retries + sum(x.retries for x in five_landings + five_fresh_landings),
    }
    print(f"growth: 5,000-event batch on an empty store {out['empty_store']}, on a grown store {sizes}: "
          f"{out['grown_store_batch']} (ratio wall {out['ratio_wall']}, round by round {out['ratio_wall_by_round']}, "
          f"CPU {out['ratio_cpu']}); with {REDELIVERED_EVENTS} "
          f"landed events delivered again {out['grown_store_batch_with_redeliveries']}; on the store before it was grown "
          f"{out['history_only_store_batch']}; the same batch for returning "
          f"customers with rows all over it {out['returning_customers_batch']}; from customers new to it "
          f"{out['new_customers_batch']}; 5 events for a customer "
          f"with {whale_stored:,} events: {out['five_event_batch']} vs {out['five_events_no_history']} without history",
          flush=True)
    return out


def memory(settings: KafkaSettings, backlogs: tuple[int, ...]) -> dict[str, Any]:
    """Peak memory of `cxj run --once` over simulated backlogs of ``backlogs`` events, each
    landed into a new store: by backlog, by process, and by tenth of the largest one's run."""
    work = Path(tempfile.mkdtemp(prefix=f"cxj-memory-{RUN_TAG}"))
    traces = {}
    for n in backlogs:
        progress(f"memory: run --once over a backlog of {n:,} events")
        t = topics_named(f"m-backlog{n}")
        ensure_topics(settings, t.values(), 3)
        send_simulated(simulate_at_least(n, 3), settings, t)
        traces[str(n)] = memory_trace(work / f"backlog{n}.duckdb", settings, t)
        _remove_store(work / f"backlog{n}.duckdb")
    rss = {n: trace.peak_mb for n, trace in traces.items()}
    largest = traces[str(max(backlogs))]
    out = {
        "peak_rss_mb_by_backlog": rss,
        "peak_rss_mb_by_process": {n: {"run": trace.run_peak_mb, "reader": trace.reader_peak_mb} for n, trace in traces.items()},
        "largest_backlog": max(backlogs),
        "peak_rss_mb_by_tenth_of_largest_backlog": largest.by_tenth_mb,
        "by_tenth_of_largest_backlog_by_process": {"run": largest.run_by_tenth_mb, "reader": largest.reader_by_tenth_mb},
        "run_process_by_kind_by_tenth_of_largest_backlog": largest.run_by_kind_by_tenth_mb,
    }
    print(f"memory: peak RSS by backlog {rss} MB (by process {out['peak_rss_mb_by_process']}; by tenth of the "
          f"{max(backlogs):,}-event backlog's run {largest.by_tenth_mb}, the run's process "
          f"{largest.run_by_tenth_mb}, the reader's {largest.reader_by_tenth_mb})", flush=True)
    print("memory: the run's process by kind of mapping, MB in the first, fifth and last tenth: " + "; ".join(
        f"{kind} {', '.join('-' if tenths[i] is None else f'{tenths[i]:,.0f}' for i in (0, 4, 9))}"
        for kind, tenths in largest.run_by_kind_by_tenth_mb.items()), flush=True)
    return out


PARTS = ("throughput", "freshness", "growth", "memory")


def _event_counts(text: str) -> tuple[int, ...]:
    """``--backlogs``: positive event counts, comma-separated."""
    try:
        counts = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected event counts separated by commas, got {text!r}") from None
    if not counts or min(counts) <= 0:
        raise argparse.ArgumentTypeError(f"event counts must be positive, got {text!r}")
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small scale (about 3-5 minutes)")
    parser.add_argument("--only", default=",".join(PARTS),
                        help="the parts to run, comma-separated (default: all four)")
    parser.add_argument("--backlogs", type=_event_counts, default=None,
                        help="backlog sizes for the memory part, comma-separated (default: 100000,200000,1000000; "
                             "--quick: 10000,20000)")
    parser.add_argument("--no-prune", action="store_true", help="recompute whole histories (the engine before pruning)")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks/results/run_all.json")
    args = parser.parse_args()
    logs.configure(quiet=True)
    if args.no_prune:
        microbatch.PRUNE_SETTLED_HISTORY = False
    scale = QUICK if args.quick else FULL
    wanted = set(args.only.split(","))
    if wanted - set(PARTS):
        parser.error(f"--only: no part named {', '.join(sorted(wanted - set(PARTS)))} (the parts: {', '.join(PARTS)})")
    fresh_at_start = _fresh_memory_mb_per_s("start")  # before the broker: nothing to stop if it fails
    port = free_port()
    work = Path(tempfile.mkdtemp(prefix="cxj-bench-"))
    start_broker(port=port, partitions=3, topics=[], state_dir=work / "broker")
    settings = KafkaSettings(bootstrap_servers=f"127.0.0.1:{port}")
    results: dict[str, Any] = {"scale": "quick" if args.quick else "full", "prune": not args.no_prune,
                               "cpus": os.cpu_count(), "load_average_at_start": os.getloadavg()[0],
                               "fresh_memory_mb_per_s_at_start": fresh_at_start}
    try:
        if "throughput" in wanted:
            results["throughput"] = throughput(settings, scale.throughput_events)
        if "freshness" in wanted:
            results["freshness"] = [freshness(settings, rate, seconds) for rate, seconds in scale.freshness]
        if "growth" in wanted:
            results["growth"] = growth(settings, scale)
        if "memory" in wanted:
            results["memory"] = memory(settings, args.backlogs or scale.backlogs)
    finally:
        stop_broker(port=port, state_dir=work / "broker")
        for folder in Path(tempfile.gettempdir()).glob(f"cxj-*-{RUN_TAG}*"):
            shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    results["load_average_at_end"] = os.getloadavg()[0]
    results["fresh_memory_mb_per_s_at_end"] = _fresh_memory_mb_per_s("end")
    standing = targets.standings(results)
    results["targets"] = targets.as_json(standing)
    print(f"targets{' (small scale: indicative only)' if args.quick else ''}:\n{targets.render(standing)}", flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2))
    print(f"results: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
