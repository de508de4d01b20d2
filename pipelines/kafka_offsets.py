"""Asking the broker where its partitions begin and end (metadata only, no records)."""
from __future__ import annotations

from typing import Iterable

from pipelines.kafka_config import KafkaSettings

PartitionKey = tuple[str, int]


class BrokerUnavailable(RuntimeError):
    """The broker could not be reached; the message says where and why."""


class OffsetReader:
    """A metadata-only consumer, kept open across batches to avoid reconnecting each time."""

    def __init__(self, settings: KafkaSettings, connect_timeout_s: float = 10.0) -> None:
        from kafka import KafkaConsumer
        from kafka.errors import KafkaError

        self.settings = settings
        self.probe = None
        self.timeout_ms = int(connect_timeout_s * 1000)  # offset requests fail this fast, not after 30 s
        try:
            self.consumer = KafkaConsumer(
                **settings.client_kwargs(), enable_auto_commit=False, group_id=None,
                bootstrap_timeout_ms=int(connect_timeout_s * 1000),
            )
        except (KafkaError, OSError, ValueError) as exc:
            raise BrokerUnavailable(f"cannot reach Kafka at {settings.bootstrap_servers}: {exc}") from None

    def partitions(self, topics: Iterable[str]) -> tuple[list[PartitionKey], list[str]]:
        """Partitions of the topics that exist, plus the names of topics that do not."""
        found: list[PartitionKey] = []
        missing: list[str] = []
        for topic in topics:
            ids = self._call(lambda: self.consumer.partitions_for_topic(topic))
            if not ids:
                missing.append(topic)
                continue
            found.extend((topic, p) for p in sorted(ids))
        return found, missing

    def bounds(self, partitions: list[PartitionKey]) -> tuple[dict[PartitionKey, int], dict[PartitionKey, int]]:
        from kafka import TopicPartition

        tps = [TopicPartition(t, p) for t, p in partitions]
        if not tps:
            return {}, {}
        begin = self._call(lambda: self.consumer.beginning_offsets(tps, timeout_ms=self.timeout_ms))
        end = self._call(lambda: self.consumer.end_offsets(tps, timeout_ms=self.timeout_ms))
        reported = {(tp.topic, tp.partition): o for tp, o in end.items()}
        return ({(tp.topic, tp.partition): o for tp, o in begin.items()}, self._call(lambda: self._true_ends(reported)))

    def _true_ends(self, reported: dict[PartitionKey, int]) -> dict[PartitionKey, int]:
        """End offsets confirmed by fetching at the reported end.

        Some Kafka-compatible brokers (Tansu 0.6, our local broker) report the base offset of
        the last record batch as the end offset, so the records of that batch would never be
        read by a run that stops at the reported end. Fetching from the reported end shows
        what really lies beyond; on a correct broker that fetch is empty and costs one short
        poll.
        """
        from kafka import KafkaConsumer, TopicPartition

        if self.probe is None:
            self.probe = KafkaConsumer(
                **self.settings.client_kwargs(), enable_auto_commit=False, group_id=None,
                fetch_max_wait_ms=10, max_poll_records=10_000, check_crcs=False,
            )
        tps = {TopicPartition(t, p): (t, p) for t, p in reported}
        self.probe.assign(list(tps))
        for tp, key in tps.items():
            self.probe.seek(tp, reported[key])
        ends = dict(reported)
        for _ in range(50):  # each round reads at most one fetch per partition beyond the end
            polled = self.probe.poll(timeout_ms=100)
            if not polled:
                break
            for tp, records in polled.items():
                if records:
                    key = tps[tp]
                    ends[key] = max(ends[key], records[-1].offset + 1)
        return ends

    def _call(self, fn):  # type: ignore[no-untyped-def]
        from kafka.errors import KafkaError

        try:
            return fn()
        except (KafkaError, OSError) as exc:
            raise BrokerUnavailable(f"Kafka at {self.settings.bootstrap_servers} failed: {exc!r}") from None

    def close(self) -> None:
        for consumer in (self.consumer, self.probe):
            try:
                if consumer is not None:
                    consumer.close()
            except Exception:  # closing a consumer of a dead broker must not mask the real error
                pass
