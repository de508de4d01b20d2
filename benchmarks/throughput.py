"""Throughput benchmark: the pipeline's end-to-end rate against the Kafka client's ceiling.

Pre-produces N simulated events to fresh topics on a local broker, then measures in one run:
  1. baseline: raw kafka-python consumption of those topics (tuned as in docs/architecture.md, D6);
  2. pipeline: `run --once` from those topics into a fresh DuckDB file (parse, validate,
     dedup, assemble journeys, land).
Prints both rates and their ratio (pipeline / baseline), and writes them as JSON.

  .venv/bin/python benchmarks/throughput.py [--events 200000] [--max-batch-events 50000]
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipelines.config.run_config import RunConfig  # noqa: E402
from pipelines.kafka.local_broker import free_port, start_broker, stop_broker  # noqa: E402
from pipelines.kafka.settings import FAST_CONSUMER_SETTINGS, KafkaSettings  # noqa: E402
from pipelines.kafka.simulator import generate_customer_events, send_simulated, to_messages  # noqa: E402
from pipelines.kafka.topics import ensure_topics  # noqa: E402
from pipelines.local.microbatch import MicroBatchRunner  # noqa: E402
from pipelines.ops import logs  # noqa: E402
from pipelines.ops.startup_heap import freeze_startup_objects  # noqa: E402
from pipelines.storage.store import Store  # noqa: E402


def simulate_at_least(n: int, seed: int) -> list[tuple[str, bytes, bytes]]:
    customers = max(10, n // 20)
    while True:
        events = generate_customer_events(customers, seed, datetime(2026, 10, 1, tzinfo=timezone.utc))
        if len(events) >= n:
            return to_messages(events[:n], seed, 0.02, 0.01, 0.0)
        customers = int(customers * n / max(1, len(events)) * 1.1) + 1


def consume_all(settings: KafkaSettings, topics: list[str]) -> tuple[int, float]:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(**settings.client_kwargs(), **FAST_CONSUMER_SETTINGS, enable_auto_commit=False, group_id=None)
    tps = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or [])]
    ends = consumer.end_offsets(tps)
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    total, target = 0, sum(ends.values())
    started = time.perf_counter()
    while total < target:
        for records in consumer.poll(timeout_ms=500).values():
            total += len(records)
    elapsed = time.perf_counter() - started
    consumer.close()
    return total, elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--max-batch-events", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/throughput.json"))
    args = parser.parse_args()
    logs.configure(quiet=True)

    port = free_port()
    work = Path(tempfile.mkdtemp(prefix="cxj-bench-"))
    start_broker(port=port, partitions=3, topics=[], state_dir=work / "broker")
    settings = KafkaSettings(bootstrap_servers=f"127.0.0.1:{port}")
    topics = {"tickets": "bench.tickets", "chats": "bench.chats", "surveys": "bench.surveys"}
    try:
        ensure_topics(settings, topics.values(), 3)
        messages = simulate_at_least(args.events, args.seed)
        print(f"producing {len(messages):,} messages ...", flush=True)
        send_simulated(messages, settings, topics)

        count, seconds = consume_all(settings, list(topics.values()))
        baseline = count / seconds
        print(f"baseline  kafka-python consume: {count:,} records in {seconds:.2f}s = {baseline:,.0f} records/s", flush=True)

        db = work / "bench.duckdb"
        config = RunConfig(db=db, settings=settings, topics=topics, max_batch_events=args.max_batch_events)
        store = Store(db)
        seconds_pipeline = 0.0
        try:
            runner = MicroBatchRunner(config, store)
            freeze_startup_objects()  # as `cxj run` does before its first batch
            started = time.perf_counter()
            batches = runner.run_once()
            runner.close()
            seconds_pipeline = time.perf_counter() - started
            journeys = store.count("journeys")
            stages = store.con.execute(
                "SELECT round(sum(ingest_s), 2), round(sum(assemble_s), 2), round(sum(land_s), 2) FROM pipeline_batches"
            ).fetchone()
        finally:
            # closing is part of the run: it publishes what is pending and checkpoints the database
            closing = time.perf_counter()
            store.close()
            seconds_pipeline += time.perf_counter() - closing
        consumed = sum(b.consumed for b in batches)
        rate = consumed / seconds_pipeline
        print(f"pipeline  Kafka -> Beam -> DuckDB: {consumed:,} records in {seconds_pipeline:.2f}s = {rate:,.0f} records/s "
              f"({len(batches)} batches, {journeys:,} journeys)", flush=True)
        print(f"          stages: ingest {stages[0]}s, assemble {stages[1]}s, land {stages[2]}s")
        ratio = rate / baseline
        print(f"ratio     pipeline / baseline = {ratio:.3f}")
        result = {
            "events": consumed, "baseline_records_per_s": round(baseline), "pipeline_records_per_s": round(rate),
            "ratio": round(ratio, 4), "batches": len(batches), "max_batch_events": args.max_batch_events,
            "stage_seconds": {"ingest": stages[0], "assemble": stages[1], "land": stages[2]},
        }
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2))
    finally:
        stop_broker(port=port, state_dir=work / "broker")
        shutil.rmtree(work, ignore_errors=True)  # the broker's state and the database: ~140 MB a run
    return 0


if __name__ == "__main__":
    sys.exit(main())
