"""What a batch's stages left in its staging directory, checked before anything lands.

A stage's output is trusted only as far as it can be checked: on a cluster a worker may write
to a disk the driver cannot see, a file may be cut short, or a runner may drop a bundle. The
read stage therefore writes a manifest per read task (per range: where it started and stopped,
how many records, first and last offset); this module checks the manifests against the
planned ranges, and the landing transaction then checks that the staged rows cover exactly
those records (pipelines/storage/store.py, ``Store._check_accounting``). A missing or short output
raises BatchNotAccounted: nothing lands and the offsets stay where they are.
"""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path

from pipelines.kafka.read import OffsetRange
from pipelines.storage.store import BatchNotAccounted, StagedFiles
from transforms.assemble import partition_dir_key
from transforms.batch_files import (
    COPY_FILES,
    DEAD_LETTER_FILES,
    EVENT_FILES,
    HANDOFF_FILES,
    JOURNEY_FILES,
    JOURNEY_METRICS_FILES,
    LINK_FILES,
    MANIFEST_FILES,
    batch_file_name,
)


def require_staging(staging: Path) -> None:
    """A staging directory removed under the batch (a tmp cleaner) is named as such, not as
    missing output (pipelines/ops/failures.py reports it)."""
    if not staging.is_dir():
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(staging))


def planned_reads(ranges: list[OffsetRange]) -> dict[tuple[str, int, int], OffsetRange]:
    return {(r.topic, r.partition, r.start): r for r in ranges}


def _manifest_entries(staging: Path, batch_id: int) -> list[dict]:
    entries: list[dict] = []
    for path in sorted(staging.glob(batch_file_name(MANIFEST_FILES, "*", "json"))):
        try:
            doc = json.loads(path.read_text())
            if not isinstance(doc, list):
                raise ValueError("not a list")
        except (OSError, ValueError) as exc:
            raise BatchNotAccounted(f"batch {batch_id}: read manifest {path.name} is unreadable: {exc}") from None
        entries.extend(doc)
    return entries


def verified_reads(staging: Path, ranges: list[OffsetRange], batch_id: int) -> list[dict]:
    """The read manifests' entries, one per planned range, each consistent with its plan."""
    require_staging(staging)
    planned = planned_reads(ranges)
    found: dict[tuple[str, int, int], dict] = {}
    for entry in _manifest_entries(staging, batch_id):
        try:
            key = (str(entry["topic"]), int(entry["partition"]), int(entry["start"]))
            start, stop, records = int(entry["start"]), int(entry["stop"]), int(entry["records"])
            planned_stop = int(entry["planned_stop"])
        except (KeyError, TypeError, ValueError) as exc:
            raise BatchNotAccounted(f"batch {batch_id}: a read manifest entry is malformed ({exc}): {entry!r:.200}") from None
        plan = planned.get(key)
        where = f"batch {batch_id}: {key[0]}[{key[1]}] from offset {key[2]}"
        if plan is None or plan.stop != planned_stop:
            raise BatchNotAccounted(f"{where}: the read manifest covers a range that was not planned")
        if key in found:
            raise BatchNotAccounted(f"{where}: two read manifests cover the same range")
        if not (start <= stop <= plan.stop) or not (0 <= records <= stop - start):
            raise BatchNotAccounted(f"{where}: the read manifest is inconsistent (stop {stop}, {records} records, planned stop {plan.stop})")
        if records and not (start <= int(entry["first"]) <= int(entry["last"]) < stop):
            raise BatchNotAccounted(f"{where}: the read manifest's first/last offsets lie outside its range")
        found[key] = {"topic": key[0], "partition": key[1], "start": start, "stop": stop, "records": records}
    missing = [k for k in planned if k not in found]
    if missing:
        topic, partition, start = missing[0]
        raise BatchNotAccounted(
            f"batch {batch_id}: no read manifest for {topic}[{partition}] from offset {start} "
            f"({len(missing)} of {len(planned)} ranges unaccounted): the read stage's output is not visible to the driver"
        )
    if ranges and sum(f["stop"] - f["start"] for f in found.values()) == 0:
        raise BatchNotAccounted(f"batch {batch_id}: the read stage covered no offsets at all")
    return [found[k] for k in planned]


def collect_staged(staging: Path) -> StagedFiles:
    """The staged ingest files by kind; journeys and links are added after assembly."""
    require_staging(staging)
    return StagedFiles(
        events=sorted(staging.glob(batch_file_name(EVENT_FILES, "*"))),
        copies=sorted(staging.glob(batch_file_name(COPY_FILES, "*"))),
        dead=sorted(staging.glob(batch_file_name(DEAD_LETTER_FILES, "*"))),
    )


def collect_assembled(staging: Path, history: Path, staged: StagedFiles, batch_id: int) -> None:
    """Adds the journeys, links, service metrics and handoffs of every history partition; each
    partition must have all four."""
    require_staging(staging)
    for part in sorted(p for p in history.iterdir() if p.is_dir()) if history.exists() else []:
        key = partition_dir_key(part.name)
        outputs = {kind: staging / batch_file_name(kind, key)
                   for kind in (JOURNEY_FILES, LINK_FILES, JOURNEY_METRICS_FILES, HANDOFF_FILES)}
        for path in outputs.values():
            if not path.exists():
                raise BatchNotAccounted(
                    f"batch {batch_id}: the assemble stage left no {path.name} for history partition {part.name}"
                )
        staged.journeys.append(outputs[JOURNEY_FILES])
        staged.links.append(outputs[LINK_FILES])
        staged.jmetrics.append(outputs[JOURNEY_METRICS_FILES])
        staged.handoffs.append(outputs[HANDOFF_FILES])
