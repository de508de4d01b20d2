"""Freshness benchmark: end-to-end latency under a steady offered load, and how far the read
replica trails the database.

Starts a local broker on a free port, `cxj run --follow --poll-interval 0.2s` into a fresh
DuckDB file and `cxj simulate --rate R` for the given duration (the same measurement as
`benchmarks/run_all.py --only freshness`, which runs 2,000 events/s for 60 s and 5,000 events/s
for 30 s). Reports, per rate: p50/p95/p99/max of landed_at minus the Kafka record timestamp
over every landed event; how long after its landing each batch first became visible in the read
replica (p50/p99/max); the number and median duration of batches; how long after the load
ended the pipeline had landed everything; the CPU seconds of the `run --follow` process and of
this benchmark itself (its replica watcher shares the cores with what it measures); and the
load average (the machine's other work distorts every wall-clock figure).

  .venv/bin/python benchmarks/freshness.py [--rate 2000] [--rate 5000] [--seconds 60]

Latency is reported by two-minute slice of the load as well (`latency_s_by_slice`), so a long
run shows whether it holds, and so are the run's cycles (`cycles_by_slice`: batches, records
per batch, seconds in a batch and between batches; benchmarks/by_slice.py), which show where
the time goes when it does not: `--seconds 1500` is the 25-minute soak of docs/ops.md,
"Measured freshness" (opt-in, about half an hour).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from run_all import RUN_TAG, freshness  # noqa: E402

from pipelines.kafka.local_broker import free_port, start_broker, stop_broker  # noqa: E402
from pipelines.kafka.settings import KafkaSettings  # noqa: E402
from pipelines.ops import logs  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, action="append", help="offered load, events/s (repeatable; default 2000)")
    parser.add_argument("--seconds", type=float, default=60.0, help="duration of the load (default %(default)s)")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks/results/freshness.json")
    args = parser.parse_args()
    logs.configure(quiet=True)
    port = free_port()
    work = Path(tempfile.mkdtemp(prefix="cxj-fresh-broker-"))
    start_broker(port=port, partitions=3, topics=[], state_dir=work / "broker")
    settings = KafkaSettings(bootstrap_servers=f"127.0.0.1:{port}")
    results = {"cpus": os.cpu_count(), "runs": []}
    try:
        for rate in args.rate or [2000.0]:
            results["runs"].append(freshness(settings, rate, args.seconds))
    finally:
        stop_broker(port=port, state_dir=work / "broker")
        for folder in Path(tempfile.gettempdir()).glob(f"cxj-*-{RUN_TAG}*"):
            shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2))
    print(f"results: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
