"""The local broker as `cxj broker` manages it: a real Tansu process on a free port.

Every test uses its own port and state directory and stops its broker in teardown. Kafka clients
are closed before a broker is stopped: Tansu waits ~5 s for connected clients on SIGTERM.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from pipelines.kafka.local_broker import BrokerError, BrokerStatus, broker_status, free_port, start_broker, stop_broker
from pipelines.kafka.settings import DEFAULT_TOPICS, KafkaSettings
from pipelines.kafka.topics import ensure_topics

ROOT = Path(__file__).resolve().parents[1]


def pid_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes() != b""
    except OSError:
        return False


@pytest.fixture
def local_broker(tmp_path: Path) -> Iterator[tuple[BrokerStatus, Path]]:
    """A broker with the default topics and 2 partitions each; always stopped afterwards."""
    port = free_port()
    try:
        yield start_broker(port=port, partitions=2, state_dir=tmp_path, timeout_s=10), tmp_path
    finally:
        stop_broker(port=port, state_dir=tmp_path)


def test_start_creates_the_three_topics_with_the_requested_partitions(local_broker):
    status, state_dir = local_broker
    assert status.running and status.answering and status.pid
    assert status.topics == {name: 2 for name in DEFAULT_TOPICS.values()}
    assert (state_dir / f"broker-{status.port}.pid").read_text().strip() == str(status.pid)
    assert status.log_path == state_dir / f"broker-{status.port}.log" and status.log_path.exists()
    assert status.binary.name == "tansu" and status.binary.is_file()


def test_start_twice_is_idempotent_and_adds_missing_topics(local_broker):
    status, state_dir = local_broker
    again = start_broker(port=status.port, partitions=4, topics=["cx.tickets", "extra.topic"], state_dir=state_dir)
    assert again.pid == status.pid
    assert again.topics["cx.tickets"] == 2  # existing topic left as it is
    assert again.topics["extra.topic"] == 4


def test_status_reports_running_answering_and_topics(local_broker):
    status, state_dir = local_broker
    now = broker_status(status.port, state_dir)
    assert (now.pid, now.running, now.answering) == (status.pid, True, True)
    assert now.topics == status.topics
    text = now.describe()
    assert f"127.0.0.1:{status.port}: running (pid {status.pid})" in text
    assert "cx.tickets (2 partitions)" in text and "memory only" in text


def test_a_produced_message_can_be_consumed(local_broker):
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    status, _ = local_broker
    settings = KafkaSettings(bootstrap_servers=status.bootstrap_servers)
    value = uuid.uuid4().hex.encode()
    producer = KafkaProducer(**settings.client_kwargs(), acks="all")
    try:
        meta = producer.send("cx.tickets", key=b"customer-1", value=value).get(timeout=10)
    finally:
        producer.close()
    consumer = KafkaConsumer(**settings.client_kwargs(), enable_auto_commit=False, consumer_timeout_ms=5000)
    try:
        partition = TopicPartition("cx.tickets", meta.partition)
        consumer.assign([partition])
        consumer.seek(partition, meta.offset)
        received = next(iter(consumer))
    finally:
        consumer.close()
    assert (received.key, received.value) == (b"customer-1", value)


def test_ensure_topics_leaves_existing_topics_and_reports_counts(local_broker):
    status, _ = local_broker
    settings = KafkaSettings(bootstrap_servers=status.bootstrap_servers)
    assert ensure_topics(settings, ["cx.chats", "other.topic"], 5) == {"cx.chats": 2, "other.topic": 5}
    assert ensure_topics(settings, [], 5) == {}


def test_stop_stops_the_process_and_status_says_not_running(tmp_path):
    port = free_port()
    try:
        pid = start_broker(port=port, partitions=1, topics=["t"], state_dir=tmp_path).pid
    finally:
        stopped = stop_broker(port=port, state_dir=tmp_path)
    assert stopped and pid is not None and not pid_alive(pid)
    status = broker_status(port, tmp_path)
    assert (status.running, status.answering, status.pid) == (False, False, None)
    assert "not running" in status.describe()
    assert not (tmp_path / f"broker-{port}.pid").exists()
    assert stop_broker(port=port, state_dir=tmp_path) is False  # nothing left to stop


def test_stale_pid_file_naming_another_process_is_never_signalled(tmp_path):
    port = free_port()
    (tmp_path / f"broker-{port}.pid").write_text(f"{os.getpid()}\n")  # this pytest process
    assert stop_broker(port=port, state_dir=tmp_path) is False
    assert not broker_status(port, tmp_path).running


def test_port_taken_by_a_plain_tcp_listener_is_a_clear_error(tmp_path):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(BrokerError, match="not a Kafka broker") as error:
            start_broker(port=port, state_dir=tmp_path, timeout_s=5)
        assert time.monotonic() - started < 5
    assert "\n" not in str(error.value)
    assert not (tmp_path / f"broker-{port}.pid").exists()


def test_broker_outlives_the_cli_command_that_started_it(tmp_path):
    port = str(free_port())
    cxj = [sys.executable, "-m", "pipelines.cli", "broker"]
    where = ["--port", port, "--state-dir", str(tmp_path)]
    run = dict(capture_output=True, text=True, timeout=60, cwd=ROOT)
    started = subprocess.run([*cxj, "start", *where], **run)
    try:
        assert started.returncode == 0, started.stderr
        assert "cx.tickets (3 partitions)" in started.stdout
        status = broker_status(int(port), tmp_path)  # the starting process has exited
        assert status.running and status.answering
        shown = subprocess.run([*cxj, "status", *where], **run)
        assert shown.returncode == 0 and "running" in shown.stdout
    finally:
        stopped = subprocess.run([*cxj, "stop", *where], **run)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    shown = subprocess.run([*cxj, "status", *where], **run)
    assert shown.returncode == 1 and "not running" in shown.stdout


def test_a_broker_that_dies_at_start_up_is_reported_with_its_log(tmp_path):
    with socket.socket() as holder:  # bound but not listening: looks free, but Tansu cannot bind it
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        with pytest.raises(BrokerError, match="exited during start-up.*Address in use"):
            start_broker(port=port, state_dir=tmp_path, timeout_s=5)
    assert not (tmp_path / f"broker-{port}.pid").exists()
    assert not broker_status(port, tmp_path).running
