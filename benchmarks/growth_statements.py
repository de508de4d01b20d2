"""Where a grown store's batch spends its extra time: every DuckDB statement of the growth
benchmark's 5,000-event batch, timed on a grown store and on an empty one, side by side.

`run_all.py --only growth` says how much more the batch costs on a store of 1M journeys; this
says which statements the difference comes from. It lands real simulated events through the
pipeline, grows the store by copying them (as `run_all.py` does), keeps a copy of it, and then,
``--runs`` times each, restores that copy and lands the same 5,000 events on it, and lands them
on an empty store. Each statement the store and its replica run is timed (the wall time of
``execute``); statements are grouped by their text with numbers and literal lists folded, and
the groups are printed by how much longer they took on the grown store (cheapest run each),
with the memory the process touched for the first time during them (its minor page faults; the
kernel zeroes each such page first, which on this machine costs from a few to some forty
microseconds a page from one minute to the next: the counts show where that cost falls
whatever the minute).

  .venv/bin/python benchmarks/growth_statements.py [--store-events 1000000] [--runs 2] [--top 30]
      [--keep DIR]

``--keep DIR`` keeps the grown store in DIR and reuses it on the next call (growing it takes
about three minutes and 3.5 GB of disk at the default size).
"""
from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from run_all import Landed, _stages, growth_events, land, land_and_grow, send_docs, topics_named  # noqa: E402
from throughput import free_port  # noqa: E402

from pipelines.kafka.local_broker import ensure_topics, start_broker, stop_broker  # noqa: E402
from pipelines.kafka.settings import KafkaSettings  # noqa: E402
from pipelines.ops import logs  # noqa: E402
from pipelines.storage.store import Store  # noqa: E402


class Timing(NamedTuple):
    connection: str  # "store" or "replica"
    sql: str
    seconds: float  # wall time of ``execute``
    faults: int  # minor page faults of the process meanwhile


Timings = list[Timing]


class TimedConnection:
    """A DuckDB connection whose ``execute`` calls are timed into ``timings``, with the minor page
    faults the process took meanwhile (memory touched for the first time, which the kernel
    zeroes first: a count that does not depend on how fast the machine is that minute; a
    statement run beside the assembly also counts the assembly's); everything else
    goes to the connection itself. ``execute`` returns this wrapper, as DuckDB returns the
    connection, so ``con.execute(...).fetchall()`` reads the same result."""

    def __init__(self, con: Any, timings: Timings, name: str) -> None:
        self._con, self._timings, self._name = con, timings, name

    def execute(self, sql: str, *args: Any, **kwargs: Any) -> "TimedConnection":
        started, faults = time.perf_counter(), _minor_faults()
        self._con.execute(sql, *args, **kwargs)
        self._timings.append(Timing(self._name, str(sql), time.perf_counter() - started, _minor_faults() - faults))
        return self

    def __getattr__(self, name: str) -> Any:
        return getattr(self._con, name)


@contextmanager
def statements_timed(timings: Timings) -> Iterator[None]:
    """Every Store opened meanwhile times its own and its replica's statements."""
    opened = Store.__init__

    def timed_init(store: Store, *args: Any, **kwargs: Any) -> None:
        opened(store, *args, **kwargs)
        store.con = TimedConnection(store.con, timings, "store")
        if store.replica is not None:
            store.replica.con = TimedConnection(store.replica.con, timings, "replica")

    Store.__init__ = timed_init  # type: ignore[method-assign]
    try:
        yield
    finally:
        Store.__init__ = opened  # type: ignore[method-assign]


def statement_kind(connection: str, sql: str) -> str:
    """The statement's group: its text on one line, with file paths, literal lists and numbers
    folded (so the same statement on both stores, in every run, with other row id ranges, falls
    in one group)."""
    text = " ".join(sql.split())
    text = re.sub(r"'[^']*/[^']*'", "'<path>'", text)  # files differ between the stores and the runs
    text = re.sub(r"\(('[^']*'(, )?)+\)", "(<literals>)", text)
    text = re.sub(r"\[('[^']*'(, )?)+\]", "[<literals>]", text)
    text = re.sub(r"\d+", "N", text)
    return f"{connection}: {text[:110]}"


def total_by_kind(timings: Timings, figure: Callable[[Timing], float]) -> dict[str, float]:
    """``figure`` of the timings (their seconds, or their faults) summed by statement group."""
    totals: dict[str, float] = defaultdict(float)
    for timing in timings:
        totals[statement_kind(timing.connection, timing.sql)] += figure(timing)
    return totals


def _seconds(timing: Timing) -> float:
    return timing.seconds


def _faults(timing: Timing) -> float:
    return timing.faults


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _mb(faults: float) -> int:
    return round(faults * resource.getpagesize() / 2**20)


def _median_mb(runs: list[dict[str, float]], kind: str) -> int:
    return _mb(int(statistics.median(r.get(kind, 0) for r in runs)))


def grown_store(settings: KafkaSettings, base: list[dict[str, Any]], store_events: int, keep: Path) -> Path:
    """The grown store's folder (database and replica), made once and kept in ``keep``."""
    snapshot = keep / "grown"
    if (snapshot / "big.duckdb").exists():
        print(f"reusing the grown store in {snapshot}", flush=True)
        return snapshot
    building = keep / "building"
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    topics = topics_named(f"gs-base-{time.time_ns()}")
    ensure_topics(settings, topics.values(), 3)
    print(f"grown to {land_and_grow(building / 'big.duckdb', settings, topics, base, store_events)}", flush=True)
    building.rename(snapshot)
    return snapshot


def timed_landing(db: Path, settings: KafkaSettings, batch: list[dict[str, Any]]) -> tuple[Landed, Timings]:
    topics = topics_named(f"gs-{time.time_ns()}")
    ensure_topics(settings, topics.values(), 3)
    send_docs(settings, topics, batch)
    timings: Timings = []
    with statements_timed(timings):
        landed = land(db, settings, topics)
    return landed, timings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store-events", type=int, default=1_000_000, help="grow the store to this many events and journeys")
    parser.add_argument("--base-events", type=int, default=100_000, help="real events landed before the store is grown")
    parser.add_argument("--runs", type=int, default=2, help="landings of the batch on each store (the cheapest counts)")
    parser.add_argument("--top", type=int, default=30, help="statement groups to print")
    parser.add_argument("--keep", type=Path, help="keep the grown store here and reuse it next time")
    args = parser.parse_args()
    logs.configure(quiet=True)

    work = Path(tempfile.mkdtemp(prefix="cxj-growth-statements-"))
    keep = args.keep or work
    port = free_port()
    settings = KafkaSettings(bootstrap_servers=f"127.0.0.1:{port}")
    start_broker(port=port, partitions=3, topics=[], state_dir=work / "broker")
    try:
        base, batch = growth_events(args.base_events)
        snapshot = grown_store(settings, base, args.store_events, keep)
        grown, empty = [], []
        grown_faults, empty_faults = [], []
        for run in range(args.runs):
            target = work / f"grown-{run}"
            shutil.copytree(snapshot, target)
            os.sync()  # the copy's writeback would run beside the landing
            landed, timings = timed_landing(target / "big.duckdb", settings, batch)
            grown.append(total_by_kind(timings, _seconds))
            grown_faults.append(total_by_kind(timings, _faults))
            print(f"grown store, run {run + 1}: wall {landed.wall_s:.2f} s (close {landed.close_s:.2f} s), "
                  f"statements {sum(t.seconds for t in timings):.2f} s, {_mb(sum(t.faults for t in timings))} MB first touched in them, "
                  f"stages {_stages(target / 'big.duckdb', landed)}", flush=True)
            shutil.rmtree(target)
            landed, timings = timed_landing(work / f"empty-{run}.duckdb", settings, batch)
            empty.append(total_by_kind(timings, _seconds))
            empty_faults.append(total_by_kind(timings, _faults))
            print(f"empty store, run {run + 1}: wall {landed.wall_s:.2f} s (close {landed.close_s:.2f} s), "
                  f"statements {sum(t.seconds for t in timings):.2f} s, {_mb(sum(t.faults for t in timings))} MB first touched in them, "
                  f"stages {_stages(work / f'empty-{run}.duckdb', landed)}", flush=True)
        kinds = set().union(*grown, *empty)
        cheapest = {kind: (min(r.get(kind, 0.0) for r in grown), min(r.get(kind, 0.0) for r in empty)) for kind in kinds}
        print(f"\nstatement groups by extra seconds on the grown store (cheapest of {args.runs} runs each):")
        print("(MB: memory first touched during the statement, median of the runs, grown / empty)")
        print(f"{'extra':>7} {'grown':>6} {'empty':>6} {'MB':>9}  statement")
        for kind, (on_grown, on_empty) in sorted(cheapest.items(), key=lambda item: item[1][1] - item[1][0])[:args.top]:
            touched = f"{_median_mb(grown_faults, kind)}/{_median_mb(empty_faults, kind)}"
            print(f"{on_grown - on_empty:+7.3f} {on_grown:6.3f} {on_empty:6.3f} {touched:>9}  {kind}")
        extra = sum(g - e for g, e in cheapest.values())
        print(f"all statements: {extra:+.2f} s on the grown store")
    finally:
        stop_broker(port=port, state_dir=work / "broker")
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
