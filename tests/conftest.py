"""Fixtures that start the real local broker once per test session."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import pytest
from hypothesis import HealthCheck, settings

from pipelines.kafka.settings import KafkaSettings
from tests.support import free_port, new_topics

if TYPE_CHECKING:
    from tests.postgres_cluster import ThrowawayPostgres

# Hypothesis profiles. "ci" (the default, also on developers' machines) is derandomized: every
# run draws the same examples, so a red run is reproducible and a green one is not luck.
# "explore" draws fresh random examples, many more of them (CXJ_HYPOTHESIS_SCALE, default 50x),
# and keeps failures in .hypothesis/ to replay: `make explore`. Every failure it ever finds is
# added to the tests as an explicit @example (see tests/test_properties.py).
# Wall-clock health checks and deadlines measure the machine, not the code: on a loaded CI machine
# (both cores busy with the parallel suite) they would fail a correct test.
_TIMING_FREE = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", derandomize=True, database=None, print_blob=True, **_TIMING_FREE)
settings.register_profile("explore", derandomize=False, print_blob=True, **_TIMING_FREE)
settings.load_profile(os.environ.get("CXJ_HYPOTHESIS_PROFILE", "ci"))


# kafka-python logs every dropped connection at ERROR; stopping the broker at the end of the
# session drops many. Failures that matter surface as exceptions in the tests themselves.
logging.getLogger("kafka").setLevel(logging.CRITICAL)


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaSettings]:
    from pipelines.kafka.local_broker import start_broker, stop_broker

    port = free_port()
    state = tmp_path_factory.mktemp("broker")
    start_broker(port=port, partitions=3, topics=[], state_dir=state)
    try:
        yield KafkaSettings(bootstrap_servers=f"127.0.0.1:{port}")
    finally:
        stop_broker(port=port, state_dir=state)


@pytest.fixture
def topics(broker: KafkaSettings) -> dict[str, str]:
    return new_topics(broker)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "journeys.duckdb"


@pytest.fixture(scope="session")
def postgres() -> Iterator["ThrowawayPostgres"]:
    """A throwaway PostgreSQL cluster for the shared lake (tests/postgres_cluster.py): started on
    a free port with its socket in a temporary folder, stopped and deleted at the end."""
    from tests.postgres_cluster import ThrowawayPostgres

    cluster = ThrowawayPostgres().start()
    try:
        yield cluster
    finally:
        cluster.stop()
