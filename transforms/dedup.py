"""De-duplication by event_id: the first delivery of an event wins (pure)."""
from __future__ import annotations

import zlib
from typing import Any, Iterable


def delivery_order(row: dict[str, Any]) -> tuple[str, int, int]:
    return (row["topic"], row["partition"], row["offset"])


def first_deliveries(rows: Iterable[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """One row per event_id (the earliest Kafka coordinates) and how many copies were dropped.

    Kafka coordinates, not arrival in this process, decide which copy wins, so the result is
    the same however the batch was split into bundles or workers.
    """
    best: dict[str, dict[str, Any]] = {}
    total = 0
    for row in rows:
        total += 1
        current = best.get(row["event_id"])
        if current is None or delivery_order(row) < delivery_order(current):
            best[row["event_id"]] = row
    return list(best.values()), total - len(best)


def bucket_of(event_id: str, buckets: int) -> int:
    """A stable bucket (same in every process, unlike hash()) so copies of an event meet."""
    return zlib.crc32(event_id.encode("utf-8")) % buckets
