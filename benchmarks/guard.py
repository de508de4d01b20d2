"""Performance regression guard: per-event cost and per-cycle overhead as ratios.

Absolute times vary by machine and by what else runs on it, so both costs are measured in CPU
seconds of this process (Beam runs in-process; the broker's own CPU is not counted) and divided
by the CPU seconds of a fixed pure-Python reference workload measured in the same run:

* per-cycle overhead: the cheapest of three `run --once` cycles of one event each (two Beam
  pipeline runs, offset look-ups, landing, replica publish), / reference;
* per-event cost: (CPU of one cycle of EVENTS events - per-cycle overhead) / EVENTS, / reference.

tests/test_perf_guard.py fails when either ratio exceeds GUARD_FACTOR times the ratio stored in
benchmarks/perf_baseline.json. After an intended change of cost (or to record this machine's
figures), write a new baseline:

  .venv/bin/python benchmarks/guard.py --write-baseline
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BASELINE = ROOT / "benchmarks" / "perf_baseline.json"
GUARD_FACTOR = 2.0
EVENTS = 4000
START = datetime(2026, 9, 1, tzinfo=timezone.utc)


def reference_cpu_s() -> float:
    """CPU seconds of a fixed pure-Python workload (JSON round trips, dict work, sorting): the
    unit both ratios are expressed in. The cheapest of three runs."""
    doc = {"event_id": "e-000", "event_type": "ticket.message", "occurred_at": "2026-03-02T09:00:00Z",
           "customer_id": "c-1", "ticket_id": "T-1", "author": "agent", "channel": "email", "schema_version": 1}
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        rows = []
        for i in range(20_000):
            d = json.loads(json.dumps({**doc, "event_id": f"e-{i:05d}"}))
            rows.append((d["occurred_at"], -i, d["event_id"], len(d)))
        rows.sort()
        best = min(best, time.process_time() - started)
    return best


def _messages(count: int, seed: int) -> list[tuple[str, bytes, bytes]]:
    from pipelines.kafka.simulator import generate_customer_events, to_messages

    customers = max(2, count // 10)
    while True:
        events = generate_customer_events(customers, seed, START)
        if len(events) >= count:
            return to_messages(events[:count], seed)
        customers *= 2


def _cycle_cpu_s(db: Path, settings: Any, topics: dict[str, str]) -> float:
    """CPU seconds of one `run --once` (a single batch) in this process."""
    from pipelines.local.microbatch import MicroBatchRunner, RunConfig
    from pipelines.storage.store import Store

    config = RunConfig(db=db, settings=settings, topics=topics, max_batch_events=1_000_000)
    with Store(db) as store:
        runner = MicroBatchRunner(config, store)
        try:
            started = time.process_time()
            batches = runner.run_once()
            spent = time.process_time() - started
        finally:
            runner.close()
    if len(batches) != 1:
        raise RuntimeError(f"expected one batch, landed {len(batches)}")
    return spent


def measure(settings: Any, make_topics: Callable[[], dict[str, str]], folder: Path) -> dict[str, float]:
    """Both ratios (and what they were computed from), against a broker at ``settings``."""
    from pipelines.kafka.simulator import send_simulated

    reference = reference_cpu_s()
    db = folder / f"guard-{uuid.uuid4().hex[:6]}.duckdb"
    topics = make_topics()
    send_simulated(_messages(1, 1), settings, topics)
    _cycle_cpu_s(db, settings, topics)  # warm-up: imports, schema, replica creation
    cycles = []
    for i in range(3):
        send_simulated(_messages(1, 100 + i), settings, topics)
        cycles.append(_cycle_cpu_s(db, settings, topics))
    overhead = min(cycles)
    send_simulated(_messages(EVENTS, 7), settings, topics)
    big = _cycle_cpu_s(db, settings, topics)
    per_event = max(big - overhead, 0.0) / EVENTS
    return {
        "reference_cpu_s": round(reference, 4),
        "cycle_cpu_s": round(overhead, 4),
        "per_event_cpu_us": round(per_event * 1e6, 2),
        "per_cycle_ratio": round(overhead / reference, 3),
        "per_event_ratio": round(per_event * 1e6 / reference, 3),  # microseconds per event per reference second
    }


def check(measured: dict[str, float], baseline: dict[str, Any]) -> list[str]:
    """The ratios that grew by more than GUARD_FACTOR against the baseline, as messages."""
    problems = []
    for name in ("per_cycle_ratio", "per_event_ratio"):
        allowed = baseline[name] * GUARD_FACTOR
        if measured[name] > allowed:
            problems.append(f"{name} {measured[name]} > {GUARD_FACTOR:g} x baseline {baseline[name]} "
                            f"(CPU: {measured})")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write-baseline", action="store_true", help=f"store the measured ratios in {BASELINE.name}")
    args = parser.parse_args()
    from throughput import free_port

    from pipelines.kafka.local_broker import ensure_topics, start_broker, stop_broker
    from pipelines.kafka.settings import KafkaSettings
    from pipelines.ops import logs

    logs.configure(quiet=True)
    port = free_port()
    work = Path(tempfile.mkdtemp(prefix="cxj-guard-"))
    start_broker(port=port, partitions=3, topics=[], state_dir=work / "broker")
    settings = KafkaSettings(bootstrap_servers=f"127.0.0.1:{port}")

    def make_topics() -> dict[str, str]:
        suffix = uuid.uuid4().hex[:6]
        topics = {s: f"guard-{suffix}.{s}" for s in ("tickets", "chats", "surveys")}
        ensure_topics(settings, topics.values(), 3)
        return topics

    try:
        measured = measure(settings, make_topics, work)
    finally:
        stop_broker(port=port, state_dir=work / "broker")
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(measured, indent=2))
    if args.write_baseline:
        BASELINE.write_text(json.dumps({**measured, "note": "written by benchmarks/guard.py --write-baseline; "
                                        "tests/test_perf_guard.py fails above 2x these ratios"}, indent=2) + "\n")
        print(f"baseline written: {BASELINE}")
        return 0
    if BASELINE.exists():
        problems = check(measured, json.loads(BASELINE.read_text()))
        for p in problems:
            print(p)
        return 1 if problems else 0
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "benchmarks"))
    sys.exit(main())
