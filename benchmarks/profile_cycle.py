"""Where the fixed cost of one `run --follow` cycle goes: cProfile (CPU seconds) of single cycles.

One runner is kept for the whole run, as `run --follow` keeps it: after a warm-up cycle
(imports, schema, replica creation), it profiles an idle cycle (nothing new on the broker), a
one-event cycle and a cycle of about --events events, each on its own, and prints the CPU
seconds of each and the top functions of the one-event cycle (or, with --show large, of the
--events cycle).

  .venv/bin/python benchmarks/profile_cycle.py [--events 500] [--top 40] [--repeat 3]
      [--show one|large] [--dump FILE]
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from guard import _messages  # noqa: E402
from throughput import free_port  # noqa: E402

from pipelines.kafka.local_broker import ensure_topics, start_broker, stop_broker  # noqa: E402
from pipelines.kafka.settings import KafkaSettings  # noqa: E402
from pipelines.kafka.simulator import send_simulated  # noqa: E402
from pipelines.local.microbatch import MicroBatchRunner, RunConfig  # noqa: E402
from pipelines.ops import logs  # noqa: E402
from pipelines.storage.store import Store  # noqa: E402


def _profiled(runner: MicroBatchRunner) -> tuple[float, float, cProfile.Profile, int]:
    """(CPU s, wall s, profile, records) of one run_batch(), as one --follow cycle does it."""
    profiler = cProfile.Profile(time.process_time)
    cpu, wall = time.process_time(), time.perf_counter()
    profiler.enable()
    batch = runner.run_batch()
    profiler.disable()
    return time.process_time() - cpu, time.perf_counter() - wall, profiler, batch.consumed if batch else 0


def _top(profiler: cProfile.Profile, sort: str, top: int) -> str:
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats(sort).print_stats(top)
    return "\n".join(line for line in out.getvalue().splitlines() if line.strip())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=500)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=3, help="cycles of each kind; the cheapest is shown")
    parser.add_argument("--dump", type=Path, default=None, help="write the shown cycle's profile here (pstats)")
    parser.add_argument("--show", choices=("one", "large"), default="one",
                        help="whose top functions to print: the one-event cycle or the --events cycle")
    args = parser.parse_args()
    large = f"{args.events} events"  # the label of the --events cycle
    logs.configure(quiet=True)
    port = free_port()
    work = Path(tempfile.mkdtemp(prefix="cxj-profile-cycle-"))
    start_broker(port=port, partitions=3, topics=[], state_dir=work / "broker")
    settings = KafkaSettings(bootstrap_servers=f"127.0.0.1:{port}")
    topics = {s: f"pc.{s}" for s in ("tickets", "chats", "surveys")}
    shown: dict[str, tuple[float, float, cProfile.Profile, int]] = {}
    try:
        ensure_topics(settings, topics.values(), 3)
        config = RunConfig(db=work / "pc.duckdb", settings=settings, topics=topics, max_batch_events=1_000_000)
        with Store(config.db) as store:
            runner = MicroBatchRunner(config, store)
            try:
                send_simulated(_messages(1, 1), settings, topics)
                runner.run_batch()  # warm-up: imports, schema, replica creation
                for kind, count in (("idle", 0), ("one event", 1), (large, args.events)):
                    for i in range(args.repeat):
                        if count:
                            send_simulated(_messages(count, 100 * count + i), settings, topics)
                        measured = _profiled(runner)
                        if kind not in shown or measured[0] < shown[kind][0]:
                            shown[kind] = measured
            finally:
                runner.close()
    finally:
        stop_broker(port=port, state_dir=work / "broker")
        shutil.rmtree(work, ignore_errors=True)
    for kind, (cpu, wall, _p, records) in shown.items():
        print(f"{kind:>12}: {cpu:.3f} CPU s, {wall:.3f} wall s, {records} records (cheapest of {args.repeat})")
    kind = "one event" if args.show == "one" else large
    if args.dump:
        shown[kind][2].dump_stats(str(args.dump))
    for sort in ("cumulative", "tottime"):
        print(f"\n--- {kind} cycle, top {args.top} by {sort} ---")
        print(_top(shown[kind][2], sort, args.top)[:20000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
