"""Which Kafka offsets the next micro-batch reads: a pure function of offsets and limits."""
from __future__ import annotations

from typing import Mapping

from pipelines.kafka.read import OffsetRange

PartitionKey = tuple[str, int]


def start_offsets(
    partitions: list[PartitionKey],
    landed: Mapping[PartitionKey, int],
    beginnings: Mapping[PartitionKey, int],
    ends: Mapping[PartitionKey, int],
) -> tuple[dict[PartitionKey, int], list[str]]:
    """Where each partition resumes, with warnings for offsets the broker no longer has.

    Re-reading is always safe (events are de-duplicated by event_id), so when the broker's
    log no longer matches what was landed (retention, or a recreated topic) reading resumes
    from the earliest offset the broker has.
    """
    starts: dict[PartitionKey, int] = {}
    warnings: list[str] = []
    for key in partitions:
        first, end = beginnings.get(key, 0), ends.get(key, 0)
        resume = landed.get(key, first)
        if resume < first:
            warnings.append(
                f"{key[0]}[{key[1]}]: offsets {resume}..{first - 1} are gone from the broker (retention?); "
                f"resuming at {first}"
            )
            resume = first
        elif resume > end:
            warnings.append(
                f"{key[0]}[{key[1]}]: landed offset {resume} is past the broker's end {end} "
                f"(topic recreated?); re-reading from {first}, duplicates are dropped by event_id"
            )
            resume = first
        starts[key] = resume
    return starts, warnings


def plan_ranges(
    starts: Mapping[PartitionKey, int],
    targets: Mapping[PartitionKey, int],
    max_events: int,
) -> list[OffsetRange]:
    """Ranges [start, target) capped at max_events in total, shared fairly by lagging partitions."""
    lagging = {k: targets[k] - s for k, s in starts.items() if k in targets and targets[k] > s}
    if not lagging:
        return []
    budget = max(1, max_events)
    shares: dict[PartitionKey, int] = {}
    remaining = dict(lagging)
    # water-filling: small partitions take what they need, the rest split what is left
    while remaining and budget > 0:
        fair = max(1, budget // len(remaining))
        satisfied = {k: lag for k, lag in remaining.items() if lag <= fair}
        if not satisfied:
            extra = budget - fair * len(remaining)  # the remainder goes to the first partitions
            for i, k in enumerate(sorted(remaining)):
                take = min(fair + (1 if i < extra else 0), remaining[k], budget)
                shares[k] = shares.get(k, 0) + take
                budget -= take
            break
        for k, lag in satisfied.items():
            shares[k] = shares.get(k, 0) + lag
            budget -= lag
            del remaining[k]
    return [
        OffsetRange(topic=k[0], partition=k[1], start=starts[k], stop=starts[k] + n)
        for k, n in sorted(shares.items())
        if n > 0
    ]


def is_valid_plan(
    ranges: list[OffsetRange],
    starts: Mapping[PartitionKey, int],
    targets: Mapping[PartitionKey, int],
) -> bool:
    """Whether ``ranges`` (planned earlier, e.g. read ahead) may be the next batch now: each
    starts exactly where its partition resumes (none skips or repeats an offset) and reads
    something, but nothing past the target. A partition may be left out: it is read later."""
    seen: set[PartitionKey] = set()
    for r in ranges:
        key = (r.topic, r.partition)
        if key in seen or key not in starts or r.start != starts[key] or not (r.start < r.stop <= targets.get(key, -1)):
            return False
        seen.add(key)
    return bool(ranges)
