"""Which copy of an event wins: the conflicting-copies rule (pure).

An event_id is one event. Copies of it (valid messages with the same event_id) are compared
by their content: the canonical JSON of the parsed message (sorted keys, no spaces, UTF-8),
hashed with SHA-256. Equal hashes are plain duplicates. Different hashes conflict, and the
copy with the smallest hash (hex digests compared as strings) wins, whatever the order in
which copies arrive, and whichever batch or partition brings them. A total order is needed so
the landed source coordinates are the same however the stream was batched too: ties between
equal contents go to the smallest (topic, partition, offset).
"""
from __future__ import annotations

import hashlib
import json
import zlib
from typing import Any, Iterable


def canonical_content(doc: Any) -> bytes:
    """The content of a copy: canonical JSON of the parsed message object."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def content_hash(doc: Any) -> str:
    return hashlib.sha256(canonical_content(doc)).hexdigest()


def payload_hash(payload: str) -> str:
    """The content hash of a stored payload (the message text as sent)."""
    return content_hash(json.loads(payload))


def copy_order(row: dict[str, Any]) -> tuple[str, str, int, int]:
    """Smaller wins: content hash first, then Kafka coordinates among equal contents."""
    return (row["content_hash"], row["topic"], row["partition"], row["offset"])


def winning_copies(rows: Iterable[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(one winner per event_id, every other copy) — independent of the input's order."""
    best: dict[str, dict[str, Any]] = {}
    losers: list[dict[str, Any]] = []
    for row in rows:
        current = best.get(row["event_id"])
        if current is None:
            best[row["event_id"]] = row
        elif copy_order(row) < copy_order(current):
            best[row["event_id"]] = row
            losers.append(current)
        else:
            losers.append(row)
    return list(best.values()), losers


def bucket_of(event_id: str, buckets: int) -> int:
    """A stable bucket (same in every process, unlike hash()) so copies of an event meet."""
    return zlib.crc32(event_id.encode("utf-8")) % buckets
