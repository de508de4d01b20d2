"""The local broker, as `cxj broker` manages it: a real Tansu process on a free port."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from infra.broker import BrokerError, broker_status, start_broker, stop_broker
from pipelines.kafka_config import KafkaSettings
from tests.support import free_port, send


def test_start_status_produce_stop(tmp_path):
    port = free_port()
    try:
        status = start_broker(port=port, partitions=2, topics=["a.tickets", "a.chats"], state_dir=tmp_path)
        assert status.running and status.answering
        assert status.topics["a.tickets"] == 2 and status.topics["a.chats"] == 2
        again = start_broker(port=port, partitions=2, topics=["a.tickets", "a.surveys"], state_dir=tmp_path)
        assert again.pid == status.pid  # idempotent: same process, missing topic added
        assert again.topics["a.surveys"] == 2
        settings = KafkaSettings(bootstrap_servers=f"127.0.0.1:{port}")
        assert send(settings, {"tickets": "a.tickets"}, [("tickets", b"k", b"v")]) == 1
        assert f"127.0.0.1:{port}: running" in broker_status(port, tmp_path).describe()
    finally:
        assert stop_broker(port=port, state_dir=tmp_path)
    assert not broker_status(port, tmp_path).running
    assert not (tmp_path / f"broker-{port}.pid").exists()
    assert stop_broker(port=port, state_dir=tmp_path) is False


def test_port_taken_by_something_else_is_a_clear_error(tmp_path):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with pytest.raises(BrokerError, match="not a Kafka broker"):
            start_broker(port=port, state_dir=tmp_path, timeout_s=5)


def test_cli_broker_commands(tmp_path):
    port = str(free_port())
    cxj = [sys.executable, "-m", "pipelines.cli", "broker"]
    env = dict(os.environ)
    state = ["--state-dir", str(tmp_path)]
    started = subprocess.run([*cxj, "start", "--port", port, *state], capture_output=True, text=True, env=env, timeout=60)
    try:
        assert started.returncode == 0, started.stderr
        assert "cx.tickets (3 partitions)" in started.stdout
        status = subprocess.run([*cxj, "status", "--port", port, *state], capture_output=True, text=True, timeout=60)
        assert status.returncode == 0 and "running" in status.stdout
    finally:
        stopped = subprocess.run([*cxj, "stop", "--port", port, *state], capture_output=True, text=True, timeout=60)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    status = subprocess.run([*cxj, "status", "--port", port, *state], capture_output=True, text=True, timeout=60)
    assert status.returncode == 1 and "not running" in status.stdout
