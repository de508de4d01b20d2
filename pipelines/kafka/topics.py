"""Topics on any Kafka: which of ours are missing, and creating them. One home for both, used by
`cxj broker start` (the local broker), `cxj produce --create-topics` and the tests."""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

from pipelines.kafka.settings import KafkaSettings

if TYPE_CHECKING:
    from kafka import KafkaAdminClient

_TOPIC_ALREADY_EXISTS = 36


class BrokerError(RuntimeError):
    """A one-line, user-facing problem with the broker; the CLI prints it and exits non-zero."""


def missing_topics(settings: KafkaSettings, topics: dict[str, str]) -> list[str]:
    """Configured event topics that do not exist on the broker."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(**settings.client_kwargs())
    try:
        existing = consumer.topics()
    finally:
        consumer.close()
    return [t for t in topics.values() if t not in existing]


def ensure_topics(settings: KafkaSettings, topics: Iterable[str], partitions: int,
                  *, replication_factor: int = 1) -> dict[str, int]:
    """Creates the topics that are missing and leaves existing ones alone; works on any Kafka.

    Returns topic -> partition count for the requested topics as the cluster reports them (an
    existing topic keeps its own count). Replication 1 suits a single local broker; a real cluster
    may need ``replication_factor=3``. Raises BrokerError (one line) when the cluster cannot be
    reached or refuses a creation (ACLs, policies).
    """
    wanted = list(dict.fromkeys(topics))
    if not wanted:
        return {}
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    try:
        admin = KafkaAdminClient(**settings.client_kwargs(), bootstrap_timeout_ms=settings.request_timeout_ms)
    except KafkaError as exc:
        raise BrokerError(f"cannot reach Kafka at {settings.bootstrap_servers}: {exc}") from exc
    try:
        existing = _partition_counts(admin, wanted)
        missing = [t for t in wanted if t not in existing]
        if missing:
            _create_topics(admin, missing, partitions, replication_factor)
            admin.wait_for_topics(missing, timeout_ms=settings.request_timeout_ms)
            existing = _partition_counts(admin, wanted)
    except KafkaError as exc:
        raise BrokerError(f"cannot create topics on {settings.bootstrap_servers}: {exc}") from exc
    finally:
        admin.close()
    return {t: existing.get(t, 0) for t in wanted}


def _partition_counts(admin: KafkaAdminClient, topics: list[str]) -> dict[str, int]:
    """Partition count of each of ``topics`` that exists (unknown ones are left out)."""
    return {t["name"]: len(t["partitions"]) for t in admin.describe_topics(topics)
            if t["error_code"] == 0 and t["partitions"]}


def _create_topics(admin: KafkaAdminClient, topics: list[str], partitions: int, replication_factor: int) -> None:
    """Creates topics; one created meanwhile by someone else is fine, any other refusal is not."""
    request = {t: {"num_partitions": partitions, "replication_factor": replication_factor} for t in topics}
    result = admin.create_topics(request, raise_errors=False)
    refused = [f"{t['name']}: {t.get('error_message') or 'error ' + str(t['error_code'])}"
               for t in result["topics"] if t["error_code"] not in (0, _TOPIC_ALREADY_EXISTS)]
    if refused:
        raise BrokerError("topic creation refused: " + "; ".join(refused))
