"""CPU microseconds per event of the whole ingest Beam run, without a profiler, against raw
kafka-python consumption of the same records in the same process.

Produces N simulated events (2% late, 1% re-delivered) to fresh topics on a local broker, then
alternates, ``--repeat`` times: raw consumption of every record with kafka-python (tuned as the
pipeline's reader), and one ingest run (`pipelines/local/batch_stages.py` ``run_ingest``: read,
parse, validate, de-duplicate, write the batch's Parquet files) over all of them. Reports the
cheapest CPU seconds of each (process CPU time, all threads) and wall seconds, per event. The
ingest run's fixed cost (pipeline construction, runner start, one consumer) is in its figure;
at 50k+ events it is a small part. The raw consumer is benchmarks/throughput.py's baseline, with
kafka-python's default CRC checks, which the pipeline's reader turns off (~20% of reading).

  .venv/bin/python benchmarks/ingest_run.py [--events 50000] [--repeat 3]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from throughput import consume_all, simulate_at_least  # noqa: E402

from pipelines.kafka.local_broker import free_port, start_broker, stop_broker  # noqa: E402
from pipelines.kafka.read import OffsetRange  # noqa: E402
from pipelines.kafka.settings import KafkaSettings  # noqa: E402
from pipelines.kafka.simulator import send_simulated  # noqa: E402
from pipelines.kafka.topics import ensure_topics  # noqa: E402
from pipelines.local.batch_stages import run_ingest  # noqa: E402
from pipelines.ops import logs  # noqa: E402


def planned_ranges(settings: KafkaSettings, topics: list[str]) -> list[OffsetRange]:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(**settings.client_kwargs(), enable_auto_commit=False, group_id=None)
    try:
        tps = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or [])]
        return [OffsetRange(tp.topic, tp.partition, 0, end) for tp, end in consumer.end_offsets(tps).items()]
    finally:
        consumer.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    logs.configure(quiet=True)
    port = free_port()
    work = Path(tempfile.mkdtemp(prefix="cxj-ingest-"))
    start_broker(port=port, partitions=3, topics=[], state_dir=work / "broker")
    settings = KafkaSettings(bootstrap_servers=f"127.0.0.1:{port}")
    topics = {"tickets": "ingest.tickets", "chats": "ingest.chats", "surveys": "ingest.surveys"}
    raw_runs: list[tuple[float, float]] = []
    ingest_runs: list[tuple[float, float]] = []
    try:
        ensure_topics(settings, topics.values(), 3)
        send_simulated(simulate_at_least(args.events, 11), settings, topics)
        ranges = planned_ranges(settings, list(topics.values()))
        records = sum(r.size for r in ranges)
        stream_of_topic = {topic: stream for stream, topic in topics.items()}
        for attempt in range(args.repeat):
            cpu, wall = time.process_time(), time.perf_counter()
            consume_all(settings, list(topics.values()))
            raw_runs.append((time.process_time() - cpu, time.perf_counter() - wall))
            staging = work / f"staging-{attempt}"
            staging.mkdir()
            cpu, wall = time.process_time(), time.perf_counter()
            result = run_ingest(ranges, settings, stream_of_topic, time.time_ns() // 1000, staging)
            ingest_runs.append((time.process_time() - cpu, time.perf_counter() - wall))
            assert result.counters.get("cxj:records_read") == records, result.counters
            shutil.rmtree(staging)
    finally:
        stop_broker(port=port, state_dir=work / "broker")
        shutil.rmtree(work, ignore_errors=True)
    load = os.getloadavg()[0]
    print(f"{records:,} records, best of {args.repeat}, load average {load:.1f}:")
    for name, runs in (("kafka-python raw consume", raw_runs), ("ingest Beam run", ingest_runs)):
        cpu = min(c for c, _ in runs)
        wall = min(w for _, w in runs)
        print(f"  {name:26s} {cpu:6.2f} CPU s = {cpu / records * 1e6:6.1f} CPU us/event; {wall:6.2f} s wall")
    return 0


if __name__ == "__main__":
    sys.exit(main())
