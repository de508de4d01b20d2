"""CPU microseconds per event of each step of the ingest half, without a broker or Beam.

Simulated messages (2% late, 1% re-delivered, as in benchmarks/throughput.py) go through the
same functions the ingest pipeline runs, step by step, each timed in CPU seconds (best of
``--repeat``): parse+validate (``_ParseChunk``'s work: a table per chunk, content hashes included), bucketing by
event id, choosing the winning copies, and writing the batch's Parquet files. Kafka decoding and
Beam's own overhead are not in it (benchmarks/profile_run.py covers the whole run).

  .venv/bin/python benchmarks/ingest_stages.py [--events 50000] [--repeat 3]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import pyarrow as pa  # noqa: E402
from throughput import simulate_at_least  # noqa: E402

from transforms.batch_files import COPY_SCHEMA, DEAD_LETTER_SCHEMA, EVENT_SCHEMA, bytes_table, write_rows  # noqa: E402
from transforms.ingest import _ParseChunk, split_by_bucket, split_copies  # noqa: E402
from transforms.parse import ParseLimits  # noqa: E402

TOPICS = {"tickets": "bench.tickets", "chats": "bench.chats", "surveys": "bench.surveys"}
NOW_US = 1_900_000_000_000_000


def best_cpu(step: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(repeat):
        started = time.process_time()
        result = step()
        best = min(best, time.process_time() - started)
    return best, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    messages = simulate_at_least(args.events, 11)
    records = [(TOPICS[stream], i % 3, i, 1_790_000_000_000 + i, value) for i, (stream, _key, value) in enumerate(messages)]
    chunks = [records[i:i + 5000] for i in range(0, len(records), 5000)]
    stream_of_topic = {topic: stream for stream, topic in TOPICS.items()}
    n = len(records)

    def parse() -> tuple[list, list]:
        parser_fn = _ParseChunk(stream_of_topic, NOW_US, ParseLimits())
        outs = [out for chunk in chunks for out in parser_fn.process(chunk)]
        return [o for o in outs if isinstance(o, pa.Table)], [o.value for o in outs if not isinstance(o, pa.Table)]

    def bucket(event_chunks: list) -> dict[int, list]:
        """BucketByEventId (the shuffle then copies the bytes it emits)."""
        grouped: dict[int, list] = {}
        for chunk in event_chunks:
            for b, data in split_by_bucket(chunk, 16):
                grouped.setdefault(b, []).append(data)
        return grouped

    def dedup(grouped: dict[int, list]) -> list:
        out = []
        for b, tables in grouped.items():
            winners, losers = split_copies(pa.concat_tables([bytes_table(data) for data in tables]))
            out.append((b, winners, losers if losers.num_rows else []))
        return out

    with tempfile.TemporaryDirectory() as tmp:
        def write(decided: list, dead: list) -> None:
            for b, winners, losers in decided:
                write_rows(f"{tmp}/events-{b}.parquet", winners, EVENT_SCHEMA)
                if losers:
                    write_rows(f"{tmp}/copies-{b}.parquet", losers, COPY_SCHEMA)
            for key, rows in dead:
                write_rows(f"{tmp}/dead-{key}.parquet", rows, DEAD_LETTER_SCHEMA)

        parse_s, (event_chunks, dead) = best_cpu(parse, args.repeat)
        bucket_s, grouped = best_cpu(lambda: bucket(event_chunks), args.repeat)
        dedup_s, decided = best_cpu(lambda: dedup(grouped), args.repeat)
        write_s, _ = best_cpu(lambda: write(decided, dead), args.repeat)
    events = sum(c.num_rows for c in event_chunks)
    print(f"{n:,} records ({events:,} valid, {sum(len(r) for _, r in dead):,} dead letters), CPU us per record, best of {args.repeat}:")
    total = 0.0
    for name, seconds in (("parse+validate+hash", parse_s), ("bucket", bucket_s), ("dedup", dedup_s), ("write parquet", write_s)):
        total += seconds
        print(f"  {name:22s} {seconds / n * 1e6:7.1f}")
    print(f"  {'total':22s} {total / n * 1e6:7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
