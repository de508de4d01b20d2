"""Optional: mirror the landed offsets into a Kafka consumer group, for the standard lag tools.

The pipeline's position lives in DuckDB, written in the same transaction as the results; that
stays the source of truth (a restart resumes from it, never from the group). Ops tooling —
`kafka-consumer-groups --describe`, Burrow, kafka-lag-exporter, a cloud provider's lag graphs —
only sees consumer groups, so with `cxj run --commit-group NAME` the offsets landed by every
batch are also committed to that group (an admin OffsetCommit: no group membership, no
rebalances). A failed commit is logged and retried with the next batch; it never fails a batch.
"""
from __future__ import annotations

import logging
from typing import Any, Optional

from pipelines.kafka.offsets import PartitionKey
from pipelines.kafka.settings import KafkaSettings
from pipelines.local.microbatch import Positions, RunListener

log = logging.getLogger("cxj.group")


class GroupOffsetCommitter(RunListener):
    def __init__(self, settings: KafkaSettings, group: str) -> None:
        self.settings = settings
        self.group = group
        self.admin: Optional[Any] = None
        self.committed: dict[PartitionKey, int] = {}
        self._failing = False

    def _commit(self, positions: Positions) -> None:
        from kafka import KafkaAdminClient, TopicPartition
        from kafka.structs import OffsetAndMetadata

        changed = {k: v for k, v in positions.landed.items() if self.committed.get(k) != v}
        if not changed:
            return
        try:
            if self.admin is None:
                self.admin = KafkaAdminClient(**self.settings.client_kwargs(), bootstrap_timeout_ms=5000)
            result = self.admin.alter_group_offsets(
                self.group, {TopicPartition(t, p): OffsetAndMetadata(o, "cxj", -1) for (t, p), o in changed.items()})
            errors = {f"{tp.topic}/{tp.partition}": err.__name__ for tp, err in result.items() if err.__name__ != "NoError"}
            if errors:
                raise RuntimeError(f"refused: {errors}")
        except Exception as exc:  # the store holds the truth; the group is a courtesy to lag tools
            if not self._failing:
                log.warning("could not commit landed offsets to consumer group %s (retried with the next batch): %s",
                            self.group, str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__)
            self._failing = True
            self.close()
            return
        if self._failing:
            log.info("committing landed offsets to consumer group %s again", self.group)
        self._failing = False
        self.committed.update(changed)

    def idle(self, positions: Positions) -> None:
        self._commit(positions)

    def batch_landed(self, batch: Any, positions: Positions) -> None:
        self._commit(positions)

    def close(self) -> None:
        if self.admin is not None:
            try:
                self.admin.close()
            except Exception:
                pass
        self.admin = None
