"""A following run's figures by slice of its load, read from the database it landed into.

The freshness benchmark judges one figure over the whole load, which hides a run that keeps up
at first and falls behind later. By slice, the same database answers two questions: does the
latency hold (``latency_by_slice``), and if not, where does a cycle's time go as the run goes
on (``cycles_by_slice``): into the batches themselves (their ingest, assembly and landing, as
``pipeline_batches`` records them) or between them, where the run commits, publishes the
replica, checkpoints and looks up the broker's offsets for the next plan. Slices start at the
earliest Kafka timestamp landed, so both kinds of slice cover the same stretch of wall time.
"""
from __future__ import annotations

from typing import Any

import duckdb

# (epoch seconds of the earliest Kafka timestamp landed): where every slice is counted from
_LOAD_START = "(SELECT min(epoch(kafka_timestamp)) FROM events)"


def latency_by_slice(con: duckdb.DuckDBPyConnection, slice_s: int) -> list[dict[str, Any]]:
    """Per slice of ``slice_s`` seconds of the load, by the events' Kafka timestamps: how many
    events, and p50, p99 and max of landed_at minus the Kafka timestamp, in seconds."""
    rows = con.execute(
        f"""SELECT slice, count(*), quantile_cont(l, 0.5), quantile_cont(l, 0.99), max(l)
            FROM (SELECT floor((epoch(kafka_timestamp) - {_LOAD_START}) / {int(slice_s)}) AS slice,
                         epoch(landed_at) - epoch(kafka_timestamp) AS l FROM events)
            GROUP BY slice ORDER BY slice""").fetchall()
    return [{"from_s": int(n) * int(slice_s), "events": c, "p50": round(a, 2), "p99": round(b, 2), "max": round(m, 2)}
            for n, c, a, b, m in rows]


def cycles_by_slice(con: duckdb.DuckDBPyConnection, slice_s: int) -> list[dict[str, Any]]:
    """Per slice of ``slice_s`` seconds of the load, by when each batch started: how many
    batches, their mean size in records read, and the mean seconds of a batch (``batch_s``:
    ingest, assembly and landing until just before its commit) and of the stretch from its end
    to the next batch's start (``between_s``: the commit, the replica publish, a checkpoint when
    one is due, the next plan's look-ups, and, once the run has caught up, the wait for new
    records; the last batch has none). Where ``between_s`` grows while ``batch_s`` per record
    holds, the time goes to what a cycle does besides its events."""
    rows = con.execute(
        f"""WITH timed AS (
                SELECT floor((epoch(started_at) - {_LOAD_START}) / {int(slice_s)}) AS slice, consumed,
                       duration_s, ingest_s, assemble_s, land_s,
                       epoch(lead(started_at) OVER (ORDER BY batch_id)) - epoch(finished_at) AS between_s
                FROM pipeline_batches WHERE consumed > 0)
            SELECT slice, count(*), avg(consumed), avg(duration_s), avg(ingest_s), avg(assemble_s), avg(land_s),
                   avg(between_s)
            FROM timed WHERE slice >= 0 GROUP BY slice ORDER BY slice""").fetchall()
    return [{"from_s": int(n) * int(slice_s), "batches": b, "records_per_batch": round(r), "batch_s": round(d, 3),
             "ingest_s": round(i, 3), "assemble_s": round(a, 3), "land_s": round(la, 3),
             "between_s": None if g is None else round(g, 3)}
            for n, b, r, d, i, a, la, g in rows]


def describe_latency(slices: list[dict[str, Any]], slice_s: int) -> str:
    """One line of ``latency_by_slice``'s figures, slice by slice."""
    return "; ".join(f"{s['from_s'] // 60}-{(s['from_s'] + slice_s) // 60} min p50 {s['p50']}s p99 {s['p99']}s"
                     for s in slices)


def describe_cycles(slices: list[dict[str, Any]], slice_s: int) -> str:
    """One line of ``cycles_by_slice``'s figures, slice by slice."""
    return "; ".join(
        f"{s['from_s'] // 60}-{(s['from_s'] + slice_s) // 60} min {s['batches']} batch{'' if s['batches'] == 1 else 'es'} of "
        f"{s['records_per_batch']:,} records, {s['batch_s']:.2f}s each (ingest {s['ingest_s']:.2f}, assemble "
        f"{s['assemble_s']:.2f}, land {s['land_s']:.2f}) + {'-' if s['between_s'] is None else format(s['between_s'], '.2f')}s between"
        for s in slices)
