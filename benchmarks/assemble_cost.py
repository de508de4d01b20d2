"""Per-event CPU cost of the assemble half of a micro-batch and of the store work around it,
without a profiler (cProfile inflates Python-heavy parts several times over).

  .venv/bin/python benchmarks/assemble_cost.py [--events 50000] [--max-batch-events 100000]
      [--keep DIR] [--repeat 3]

One `run --once` in this process, with each part wrapped in a CPU-seconds timer
(``time.process_time``: all threads of the process; Beam runs its bundles in the calling
thread and DuckDB's threads are counted too):

* copy resolution (``Store.resolve_copies``) and history export (``Store.export_history``);
* the assemble Beam run (``run_assemble``), and inside it reading the history files, the pure
  assembly (``read_history``, ``assemble_events``) and writing the four output files;
* the landing transaction (``Store.land``) without the replica publish, which is timed apart.

Then, on a copy of the history files the run exported, the pure assembly alone again
(``--repeat`` times, best run): the figure least disturbed by other work on the machine.
``--keep DIR`` leaves the history files and the database there, to compare the journeys an
implementation assembles from them with another's.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from run_all import land, topics_named  # noqa: E402
from throughput import free_port, simulate_at_least  # noqa: E402

import pipelines.local.microbatch as microbatch  # noqa: E402
import transforms.assemble as assemble  # noqa: E402
import transforms.batch_files as batch_files  # noqa: E402
from pipelines.kafka.local_broker import ensure_topics, start_broker, stop_broker  # noqa: E402
from pipelines.kafka.settings import KafkaSettings  # noqa: E402
from pipelines.kafka.simulator import send_simulated  # noqa: E402
from pipelines.ops import logs  # noqa: E402
from pipelines.storage.store import Store  # noqa: E402
from transforms.journeys import DEFAULT_REPEAT_WINDOW_S  # noqa: E402

CPU: dict[str, float] = defaultdict(float)
WALL: dict[str, float] = defaultdict(float)
_inside: set[str] = set()


def timed(name: str, fn: Callable[..., Any], only_inside: str = "") -> Callable[..., Any]:
    """``fn`` with its CPU and wall seconds added to CPU[name] / WALL[name] (only while the part
    ``only_inside`` runs, when given: write_rows serves the ingest run too)."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if only_inside and only_inside not in _inside:
            return fn(*args, **kwargs)
        _inside.add(name)
        cpu, wall = time.process_time(), time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            CPU[name] += time.process_time() - cpu
            WALL[name] += time.perf_counter() - wall
            _inside.discard(name)

    return wrapper


STATEMENTS: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0])


class _TimedConnection:
    """A DuckDB connection whose execute() adds CPU and wall seconds per statement text."""

    def __init__(self, con: Any) -> None:
        self._con = con

    def execute(self, query: str, *args: Any) -> Any:
        cpu, wall = time.process_time(), time.perf_counter()
        try:
            return self._con.execute(query, *args)
        finally:
            entry = STATEMENTS[" ".join(query.split())[:150]]
            entry[0] += time.process_time() - cpu
            entry[1] += time.perf_counter() - wall
            entry[2] += 1

    def __getattr__(self, name: str) -> Any:
        return getattr(self._con, name)


def instrument(keep_history: Path, statements: bool) -> None:
    if statements:  # the store's own statements (not the replica's, which has its own connection)
        original_init = Store.__init__

        def init_timed(self: Store, *args: Any, **kwargs: Any) -> None:
            original_init(self, *args, **kwargs)
            self.con = _TimedConnection(self.con)

        Store.__init__ = init_timed

    original_export = Store.export_history

    def export_and_keep(self: Store, target: Path, *args: Any, **kwargs: Any) -> int:
        customers = original_export(self, target, *args, **kwargs)
        if target.exists():
            shutil.copytree(target, keep_history / target.parent.name, dirs_exist_ok=True)
        return customers

    Store.resolve_copies = timed("copy resolution", Store.resolve_copies)
    Store.export_history = timed("history export", export_and_keep)
    Store.land = timed("landing (with publish)", Store.land)
    Store._land_service_metrics = timed("  service metrics + revisions", Store._land_service_metrics)
    Store._snapshot_before = timed("  journey snapshot before landing", Store._snapshot_before)
    Store._check_accounting = timed("  accounting check", Store._check_accounting)
    Store._land_losing_copies = timed("  losing copies", Store._land_losing_copies)
    microbatch.run_assemble = timed("assemble Beam run", microbatch.run_assemble)
    if hasattr(assemble, "read_history"):
        assemble.read_history = timed("  read history files", assemble.read_history)
        assemble.assemble_events = timed("  assembly (pure functions)", assemble.assemble_events)
    else:  # before the columnar read (to measure an older tree with this script)
        assemble.read_rows = timed("  read history files", assemble.read_rows)
        assemble.assemble_rows = timed("  assembly (pure functions)", assemble.assemble_rows)
    batch_files.write_rows = timed("  write output files", batch_files.write_rows, only_inside="assemble Beam run")

    from pipelines.storage.replica import Replica

    Replica.after_land = timed("replica publish", Replica.after_land)


def offline_assembly(history: Path, repeat: int) -> tuple[float, int]:
    """Best CPU seconds of reading and assembling every kept history file, and the events in them."""
    files = sorted(str(f) for f in history.rglob("*.parquet"))
    events = 0
    best = float("inf")
    for _ in range(repeat):
        started = time.process_time()
        for path in files:
            by_customer = assemble.read_history(path)
            events += sum(len(e) for e in by_customer.values()) if _ == 0 else 0
            assemble.assemble_events(by_customer.items(), DEFAULT_REPEAT_WINDOW_S)
        best = min(best, time.process_time() - started)
    return best, events


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--max-batch-events", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", type=Path, default=None)
    parser.add_argument("--statements", type=int, default=0, metavar="N",
                        help="also list the store's N costliest SQL statements (CPU seconds)")
    args = parser.parse_args()
    logs.configure(quiet=True)
    work = Path(tempfile.mkdtemp(prefix="cxj-assemble-cost-"))
    keep = args.keep or work / "kept"
    (keep / "history").mkdir(parents=True, exist_ok=True)
    # the raw assembly functions, for the offline run (before they are wrapped)
    raw = (getattr(assemble, "read_history", None), getattr(assemble, "assemble_events", None))
    instrument(keep / "history", args.statements)
    port = free_port()
    start_broker(port=port, partitions=3, topics=[], state_dir=work / "broker")
    settings = KafkaSettings(bootstrap_servers=f"127.0.0.1:{port}")
    topics = topics_named("cost")
    try:
        ensure_topics(settings, topics.values(), 3)
        send_simulated(simulate_at_least(args.events, 11), settings, topics)
        db = keep / "cost.duckdb"
        landed = land(db, settings, topics, args.max_batch_events)
    finally:
        stop_broker(port=port, state_dir=work / "broker")
    import duckdb

    with duckdb.connect(str(db), read_only=True) as con:  # batches of resumed runs included
        consumed = int(con.execute("SELECT sum(consumed) FROM pipeline_batches").fetchone()[0])
        batches = int(con.execute("SELECT count(*) FROM pipeline_batches").fetchone()[0])
    with open("/proc/loadavg") as handle:
        load = handle.read().split()[:3]
    print(f"{consumed:,} events in {batches} batches ({landed.retries} resumptions): run --once {landed.cpu_s:.2f} CPU s "
          f"({landed.cpu_s / consumed * 1e6:.0f} us/event), {landed.wall_s:.2f} s wall; load average {' '.join(load)}")
    CPU["landing (without publish)"] = CPU["landing (with publish)"] - CPU["replica publish"]
    WALL["landing (without publish)"] = WALL["landing (with publish)"] - WALL["replica publish"]
    print(f"{'part':36} {'CPU s':>8} {'us/event':>9} {'wall s':>8}")
    for name in ("copy resolution", "history export", "assemble Beam run", "  read history files",
                 "  assembly (pure functions)", "  write output files", "landing (without publish)",
                 "  losing copies", "  journey snapshots", "  service metrics + revisions", "  accounting check",
                 "replica publish"):
        print(f"{name:36} {CPU[name]:8.2f} {CPU[name] / consumed * 1e6:9.1f} {WALL[name]:8.2f}")
    if args.statements:
        print(f"the store's {args.statements} costliest statements: CPU s, wall s, calls")
        for text, (cpu, wall, calls) in sorted(STATEMENTS.items(), key=lambda kv: -kv[1][0])[:args.statements]:
            print(f"  {cpu:6.2f} {wall:6.2f} {calls:4d}  {text}")
    if raw[0] is None:
        return 0
    assemble.read_history, assemble.assemble_events = raw
    best, events = offline_assembly(keep / "history", args.repeat)
    print(f"offline: read_history + assemble_events of the kept history ({events:,} events), best of {args.repeat}: "
          f"{best:.2f} CPU s ({best / max(1, events) * 1e6:.1f} us/event)")
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
