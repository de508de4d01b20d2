"""Where the time of `run --once` goes: cProfile of the whole run plus the per-stage seconds the
engine records in pipeline_batches (ingest, assemble, land; the rest of a cycle is planning,
offset look-ups, history export and the replica publish).

  .venv/bin/python benchmarks/profile_run.py [--events 100000] [--max-batch-events 50000]
      [--top 35] [--no-prune] [--save FILE]

The profile counts CPU seconds of the whole process (threads included), not wall time, so other
work on the machine distorts it little. Beam's FnApiRunner runs bundles in the calling thread by
default, so the profile includes the
transforms' own work. After the per-batch table it prints the ingest run's CPU microseconds per
event by part (Kafka fetch+decode, parse, bucketing, dedup, Parquet writing, and the rest:
Beam's own work).
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import duckdb  # noqa: E402
from run_all import land, topics_named  # noqa: E402
from throughput import free_port, simulate_at_least  # noqa: E402

import pipelines.local.microbatch as microbatch  # noqa: E402
from pipelines.kafka.local_broker import ensure_topics, start_broker, stop_broker  # noqa: E402
from pipelines.kafka.settings import KafkaSettings  # noqa: E402
from pipelines.kafka.simulator import send_simulated  # noqa: E402
from pipelines.ops import logs  # noqa: E402

# The ingest run's parts: (label, (file suffix, function name)) whose cumulative CPU seconds are
# summed. Generators (the reader, the DoFns) are timed only while they run, not while Beam
# passes what they yielded downstream, so the parts do not overlap.
INGEST_PARTS = (
    ("Kafka fetch+decode (read_range_chunks)", ("pipelines/kafka/read.py", "read_range_chunks")),
    ("parse+validate+hash (_ParseChunk)", ("transforms/ingest.py", "process", "_ParseChunk")),
    ("bucket by event id (split_by_bucket)", ("transforms/ingest.py", "split_by_bucket")),
    ("dedup (_KeepWinningCopy)", ("transforms/ingest.py", "process", "_KeepWinningCopy")),
    ("Parquet writing (_WriteParquet)", ("transforms/batch_files.py", "process", "_WriteParquet")),
)


def _cumulative(stats: pstats.Stats, where: tuple[str, ...]) -> float:
    """Cumulative seconds of the function named by (file suffix, name[, class]); a class is told
    apart by the line range of its methods (several DoFns in one file define ``process``)."""
    suffix, name = where[0], where[1]
    found = [(key, value) for key, value in stats.stats.items() if key[0].endswith(suffix) and key[2] == name]  # type: ignore[attr-defined]
    if len(where) == 3:
        source = (ROOT / suffix).read_text().splitlines()
        start = next(i for i, line in enumerate(source, 1) if line.startswith(f"class {where[2]}("))
        end = next((i for i, line in enumerate(source, 1) if i > start and line.startswith("class ")), len(source) + 1)
        found = [(key, value) for key, value in found if start < key[1] < end]
    return sum(value[3] for _, value in found)


def print_ingest_parts(stats: pstats.Stats, consumed: int) -> None:
    """CPU microseconds per consumed event of each part of the ingest Beam run, and the rest of
    that run (Beam's own work: graph construction, runner start, element passing, the shuffle)."""
    ingest = _cumulative(stats, ("pipelines/local/batch_stages.py", "run_ingest"))
    print("\ningest Beam run, CPU us per consumed event (under cProfile, which inflates Python-heavy parts):")
    parts = 0.0
    for label, where in INGEST_PARTS:
        seconds = _cumulative(stats, where)
        parts += seconds
        print(f"  {label:42s} {seconds / consumed * 1e6:8.1f}")
    print(f"  {'Beam and the rest of the run':42s} {(ingest - parts) / consumed * 1e6:8.1f}")
    print(f"  {'whole ingest run (run_ingest)':42s} {ingest / consumed * 1e6:8.1f}  ({ingest:.2f} CPU s)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--max-batch-events", type=int, default=50_000)
    parser.add_argument("--top", type=int, default=35)
    parser.add_argument("--no-prune", action="store_true")
    parser.add_argument("--save", type=Path, help="also write the raw profile here (pstats format)")
    args = parser.parse_args()
    logs.configure(quiet=True)
    if args.no_prune:
        microbatch.PRUNE_SETTLED_HISTORY = False
    port = free_port()
    work = Path(tempfile.mkdtemp(prefix="cxj-profile-"))
    start_broker(port=port, partitions=3, topics=[], state_dir=work / "broker")
    settings = KafkaSettings(bootstrap_servers=f"127.0.0.1:{port}")
    topics = topics_named("prof")
    try:
        ensure_topics(settings, topics.values(), 3)
        send_simulated(simulate_at_least(args.events, 11), settings, topics)
        db = work / "prof.duckdb"
        profiler = cProfile.Profile(time.process_time)  # CPU seconds: robust against a busy machine
        started = time.perf_counter()
        profiler.enable()
        landed = land(db, settings, topics, args.max_batch_events)
        wall, batches = landed.wall_s, landed.batches
        profiler.disable()
        total = time.perf_counter() - started
    finally:
        stop_broker(port=port, state_dir=work / "broker")
    consumed = sum(b.consumed for b in batches)
    if args.save:
        profiler.dump_stats(str(args.save))
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute("""SELECT batch_id, consumed, round(duration_s, 2), round(ingest_s, 2), round(assemble_s, 2),
                                     round(land_s, 2), round(duration_s - ingest_s - assemble_s - land_s, 2)
                              FROM pipeline_batches ORDER BY batch_id""").fetchall()
    print(f"{consumed:,} events in {len(batches)} batches, {wall:.2f}s wall ({wall / consumed * 1e6:.1f} us/event), "
          f"{landed.cpu_s:.2f} CPU s ({landed.cpu_s / consumed * 1e6:.1f} us/event); {landed.retries} broker retries")
    print("batch  records  duration  ingest  assemble  land  other(plan+resolve+export)")
    for r in rows:
        print("  ".join(str(x) for x in r))
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    print(f"outside the batches (planning, offset checks, replica publish): "
          f"{wall - sum(r[2] for r in rows):.2f}s of {total:.2f}s")
    print_ingest_parts(pstats.Stats(profiler), consumed)
    for sort in ("tottime", "cumulative"):
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats(sort).print_stats(args.top)
        print(f"\n--- top {args.top} by {sort} ---")
        print("\n".join(line for line in out.getvalue().splitlines() if line.strip())[:12000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
