"""Freshness benchmark: end-to-end latency and lag under a steady offered load.

Starts a local broker on a free port, `cxj run --follow` into a fresh DuckDB file, and
`cxj simulate --rate R` for at least the given duration; samples the lag (broker end offsets
minus landed offsets) every 2 s; then reports p50/p95/p99 end-to-end latency (landed_at minus
the Kafka record timestamp, per event) and the maximum lag, and writes them as JSON.

  .venv/bin/python benchmarks/freshness.py [--rate 2000] [--seconds 120]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import duckdb  # noqa: E402

from pipelines.kafka.local_broker import free_port, start_broker, stop_broker  # noqa: E402
from pipelines.kafka.offsets import OffsetReader  # noqa: E402
from pipelines.kafka.settings import KafkaSettings  # noqa: E402
from pipelines.kafka.topics import ensure_topics  # noqa: E402

EVENTS_PER_CUSTOMER = 11.5  # what the simulator produces on average


def sample_lag(settings: KafkaSettings, topics: list[str], db: Path, stop: threading.Event, samples: list) -> None:
    from pipelines.storage.reader import open_reader

    reader = OffsetReader(settings)
    try:
        while not stop.wait(2.0):
            try:
                partitions, _ = reader.partitions(topics)
                _, ends = reader.bounds(partitions)
                con, _source = open_reader(db, wait_s=1.0)
                try:
                    landed = dict(((t, p), o) for t, p, o in con.execute(
                        'SELECT topic, "partition", next_offset FROM pipeline_offsets').fetchall())
                finally:
                    con.close()
                lag = sum(max(0, end - landed.get(k, 0)) for k, end in ends.items())
                samples.append((time.time(), lag))
            except Exception as exc:  # a sample may fail while the replica is first built
                samples.append((time.time(), None))
                print(f"  (lag sample failed: {str(exc).splitlines()[0][:120]})", flush=True)
    finally:
        reader.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=2000.0, help="offered load, events/s (default %(default)s)")
    parser.add_argument("--seconds", type=float, default=120.0, help="duration of the load (default %(default)s)")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks/results/freshness.json")
    args = parser.parse_args()

    port = free_port()
    work = Path(tempfile.mkdtemp(prefix="cxj-fresh-"))
    start_broker(port=port, partitions=3, topics=[], state_dir=work / "broker")
    settings = KafkaSettings(bootstrap_servers=f"127.0.0.1:{port}")
    topics = {"tickets": "fresh.tickets", "chats": "fresh.chats", "surveys": "fresh.surveys"}
    ensure_topics(settings, topics.values(), 3)
    db = work / "fresh.duckdb"
    kafka_args = ["--bootstrap-servers", settings.bootstrap_servers, "--topic-tickets", topics["tickets"],
                  "--topic-chats", topics["chats"], "--topic-surveys", topics["surveys"]]
    cxj = [sys.executable, "-m", "pipelines.cli"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    run = subprocess.Popen([*cxj, "run", "--follow", "--quiet", "--db", str(db), "--poll-interval", "0.2s", *kafka_args],
                           cwd=ROOT, env=env)
    customers = int(args.rate * args.seconds / EVENTS_PER_CUSTOMER) + 1
    start = (datetime.now(timezone.utc) - timedelta(days=90)).isoformat()
    samples: list = []
    stop = threading.Event()
    sampler = threading.Thread(target=sample_lag, args=(settings, list(topics.values()), db, stop, samples), daemon=True)
    try:
        time.sleep(3)  # let the pipeline start before the load begins
        sampler.start()
        print(f"offering {args.rate:.0f} events/s for ~{args.seconds:.0f}s ({customers} customers) ...", flush=True)
        began = time.time()
        subprocess.run([*cxj, "simulate", "--quiet", "--customers", str(customers), "--seed", "5", "--start", start,
                        "--rate", str(args.rate), *kafka_args], cwd=ROOT, env=env, check=True)
        load_s = time.time() - began
        caught_up = time.time() + 120
        while time.time() < caught_up and not (samples and samples[-1][1] == 0):
            time.sleep(1)
    finally:
        stop.set()
        run.send_signal(signal.SIGTERM)
        run.wait(timeout=120)
        stop_broker(port=port, state_dir=work / "broker")
    with duckdb.connect(str(db), read_only=True) as con:
        p50, p95, p99, events, batches = con.execute(
            """SELECT quantile_cont(l, 0.5), quantile_cont(l, 0.95), quantile_cont(l, 0.99), count(*),
                      (SELECT count(*) FROM pipeline_batches)
               FROM (SELECT epoch(landed_at) - epoch(kafka_timestamp) AS l FROM events)"""
        ).fetchone()
    lags = [lag for _, lag in samples if lag is not None]
    result = {
        "offered_rate": args.rate, "load_seconds": round(load_s, 1), "events_landed": events, "batches": batches,
        "latency_s": {"p50": round(p50, 2), "p95": round(p95, 2), "p99": round(p99, 2)},
        "max_lag_messages": max(lags) if lags else None, "lag_samples": len(lags),
    }
    print(f"landed {events:,} events in {batches} batches over {load_s:.0f}s at {args.rate:.0f}/s offered")
    print(f"end-to-end latency  p50 {p50:.2f}s  p95 {p95:.2f}s  p99 {p99:.2f}s")
    print(f"maximum lag         {result['max_lag_messages']} messages ({len(lags)} samples)")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
