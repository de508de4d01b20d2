"""Is the broker's log still the one we landed from? Pure comparisons, no I/O.

Offsets alone cannot tell: a topic that was deleted and recreated (the local broker loses
every topic when it restarts) starts again at offset 0, and after enough new messages its end
lies past the offset we stored, so "resume at the stored offset" would silently skip the new
log's first records. So with every stored offset we also store a fingerprint of the last
record landed from that partition (its offset, Kafka timestamp and a digest of key and value),
and before planning a batch we fetch the record at that offset again: a different record, or
none, means a different log. See docs/reliability.md, "When the source log changes".
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterable, Mapping, Optional

PartitionKey = tuple[str, int]

RECREATED = "recreated"
RETENTION = "retention"
PARTITION_REMOVED = "partition_removed"


@dataclass(frozen=True)
class Fingerprint:
    """Identifies one record of one partition's log."""

    offset: int
    timestamp_ms: Optional[int]
    digest: str


def fingerprint(offset: int, timestamp_ms: Optional[int], key: Optional[bytes], value: Optional[bytes]) -> Fingerprint:
    """Length-prefixed, so (key, value) pairs never collide by concatenation; None differs from b""."""
    h = hashlib.sha256()
    for part in (key, value):
        if part is None:
            h.update(b"\xff" * 8)
        else:
            h.update(len(part).to_bytes(8, "big"))
            h.update(part)
    return Fingerprint(offset=offset, timestamp_ms=timestamp_ms, digest=h.hexdigest()[:32])


@dataclass(frozen=True)
class SourceChange:
    """A partition whose log is not the one we landed from, and what the pipeline does about it.

    kind ``recreated``: a different log; re-read from ``to_offset`` (its earliest offset);
    ``records`` is how many records of the new log lie before the stored offset (they would
    have been skipped). ``retention``: records ``[from_offset, to_offset)`` were deleted before
    they were read; ``records`` of them are lost. ``partition_removed``: the partition is gone;
    its stored offset is dropped; ``records`` is how many we know were never landed (None:
    unknown).
    """

    topic: str
    partition: int
    kind: str
    from_offset: int
    to_offset: Optional[int]
    records: Optional[int]
    detail: str

    @property
    def key(self) -> PartitionKey:
        return (self.topic, self.partition)

    def message(self) -> str:
        """One log line naming the partition, the cause and the consequence."""
        where = f"{self.topic}[{self.partition}]"
        if self.kind == RECREATED:
            return (f"topic {self.topic} was recreated or truncated on the broker: re-reading it from the earliest "
                    f"offset ({where}: {self.detail}; resuming at {self.to_offset} instead of {self.from_offset}, "
                    f"re-delivered events are dropped as duplicates)")
        if self.kind == RETENTION:
            return (f"{where}: {self.records} records lost: offsets {self.from_offset}..{(self.to_offset or 0) - 1} "
                    f"were deleted by the broker before they were read (retention); resuming at {self.to_offset}")
        lost = "an unknown number of" if self.records is None else str(self.records)
        return (f"{where}: the partition no longer exists on the broker ({self.detail}); {lost} records "
                f"from offset {self.from_offset} on were never landed")


def offsets_to_verify(
    stored: Mapping[PartitionKey, int],
    fingerprints: Mapping[PartitionKey, Optional[Fingerprint]],
    partitions: Iterable[PartitionKey],
    beginnings: Mapping[PartitionKey, int],
    ends: Mapping[PartitionKey, int],
) -> dict[PartitionKey, int]:
    """The fingerprinted offsets the broker should still hold: fetch these and compare."""
    wanted: dict[PartitionKey, int] = {}
    for key in partitions:
        fp = fingerprints.get(key)
        if key in stored and fp is not None and beginnings.get(key, 0) <= fp.offset < ends.get(key, 0):
            wanted[key] = fp.offset
    return wanted


def source_changes(
    stored: Mapping[PartitionKey, int],
    fingerprints: Mapping[PartitionKey, Optional[Fingerprint]],
    partitions: Iterable[PartitionKey],
    missing_topics: Iterable[str],
    beginnings: Mapping[PartitionKey, int],
    ends: Mapping[PartitionKey, int],
    observed: Mapping[PartitionKey, Optional[Fingerprint]],
    last_seen_ends: Optional[Mapping[PartitionKey, int]] = None,
) -> list[SourceChange]:
    """Compares what was landed with the broker's log now; returns every partition that changed.

    ``stored``: next offset per landed partition. ``fingerprints``: the record identified for
    each (normally the one at next offset - 1). ``observed``: what the broker holds at the
    offsets `offsets_to_verify` asked for (None or absent: no record there). ``ends`` must be
    confirmed end offsets. Topics missing altogether are left alone (they may be being
    recreated right now); the caller reports them.

    When a log cannot be verified, resuming at the broker's earliest offset is what every
    interpretation asks for, and re-reading is safe (event_id de-duplication); so in doubt this
    re-reads. A stored offset moves forward only past records the broker no longer has.
    """
    missing = set(missing_topics)
    present = set(partitions)
    topics_present = {t for t, _ in present}
    changes: list[SourceChange] = []
    for key in sorted(stored):
        topic, partition = key
        n = stored[key]
        if topic in missing or topic not in topics_present:
            continue
        if key not in present:
            count = sum(1 for t, _ in present if t == topic)
            seen_end = (last_seen_ends or {}).get(key)
            lost = max(0, seen_end - n) if seen_end is not None else None
            changes.append(SourceChange(topic, partition, PARTITION_REMOVED, n, None, lost,
                                        f"the topic now has {count} partition{'s' * (count != 1)}"))
            continue
        first, end = beginnings.get(key, 0), ends.get(key, 0)
        if n < first:
            changes.append(SourceChange(topic, partition, RETENTION, n, first, first - n,
                                        f"its earliest offset {first} is past the next offset to land {n}"))
            continue
        fp = fingerprints.get(key)
        if fp is None or fp.offset < first:
            # nothing to compare: never fingerprinted (an older database), or retention deleted
            # the fingerprinted record itself, which leaves n == first: resuming at n is right
            if n > end:
                changes.append(SourceChange(topic, partition, RECREATED, n, first, max(0, end - first),
                                            f"its end {end} lies before the next offset to land {n}"))
            continue
        seen = observed.get(key)
        if seen == fp:
            continue
        if seen is not None:
            why = f"offset {fp.offset} holds a different record than the one landed"
        elif fp.offset >= end:
            why = f"its end {end} lies before the next offset to land {n}"
        else:
            why = f"offset {fp.offset} no longer holds the record landed from it"
        changes.append(SourceChange(topic, partition, RECREATED, n, first, max(0, min(n, end) - first), why))
    return changes
