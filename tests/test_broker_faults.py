"""Broker faults against the real broker process: down at start, stopped and restarted mid-run,
and broker errors raised inside a Beam stage.

The local broker (Tansu) keeps its data in memory only: a restarted broker has lost every topic.
The pipeline must notice (the topics' logs start over), re-read them from the start and rely on
event_id de-duplication, so re-delivered events are counted once.
"""
from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from pipelines.kafka.local_broker import start_broker, stop_broker
from pipelines.kafka.offsets import BrokerUnavailable
from pipelines.kafka.settings import KafkaSettings
from pipelines.kafka.topics import ensure_topics
from tests.support import free_port, send_events, table

TOPICS = {"tickets": "bf.tickets", "chats": "bf.chats", "surveys": "bf.surveys"}


def events(prefix: str, n: int) -> list[dict]:
    start = datetime(2026, 9, 1, tzinfo=timezone.utc)
    return [{"event_id": f"{prefix}-{i}", "event_type": "ticket.created", "customer_id": f"{prefix}{i % 5}",
             "schema_version": 1, "occurred_at": (start + timedelta(minutes=i)).isoformat(),
             "ticket_id": f"{prefix}T{i}", "channel": "email"} for i in range(n)]


def cli(db: Path, port: int, *mode: str) -> list[str]:
    return [sys.executable, "-m", "pipelines.cli", "run", *mode, "--db", str(db), "--bootstrap-servers",
            f"127.0.0.1:{port}", "--topic-tickets", TOPICS["tickets"], "--topic-chats", TOPICS["chats"],
            "--topic-surveys", TOPICS["surveys"], "--poll-interval", "0.2s"]


class Logged:
    """A `cxj` subprocess whose log lines are collected by a thread, so tests can wait for one."""

    def __init__(self, cmd: list[str]) -> None:
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stderr), daemon=True)
        self.reader.start()

    def wait_for(self, pattern: str, timeout: float, after: int = 0) -> bool:
        """Waits for a log line matching ``pattern`` among lines[after:]."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(re.search(pattern, line) for line in self.lines[after:]):
                return True
            if self.proc.poll() is not None:
                self.reader.join(5)
                return any(re.search(pattern, line) for line in self.lines[after:])
            time.sleep(0.1)
        return False

    def finish(self, sig: signal.Signals = signal.SIGTERM) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.proc.wait(timeout=120)
        self.reader.join(10)
        return "".join(self.lines)


def landed(db: Path) -> int:
    try:
        from pipelines.storage.reader import open_reader

        con, _ = open_reader(db, wait_s=2, one_shot=True)
        try:
            return con.execute("SELECT count(*) FROM events").fetchone()[0]
        finally:
            con.close()
    except Exception:
        return -1


def wait_until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.5)
    return False


def error_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if " ERROR " in line]


# How long giving up may take, from the documented behaviour (docs/reliability.md): `--once` retries
# until --broker-timeout has passed; each attempt waits up to min(5 s, --broker-timeout) for a
# connection and a failed one pauses 1 s, so the last attempt ends at most one attempt later.
EXIT_MARGIN_S = 3.0  # closing the process once it has decided: no Beam stage is running


def give_up_bound(broker_timeout_s: float) -> float:
    return broker_timeout_s + 1.0 + min(5.0, broker_timeout_s) + EXIT_MARGIN_S


def test_once_without_broker_fails_clearly_and_lands_nothing(tmp_path):
    db = tmp_path / "j.duckdb"
    run = Logged([*cli(db, free_port(), "--once"), "--broker-timeout", "3s"])
    assert run.wait_for(r"INFO +landing into", 120), "".join(run.lines)  # start-up (imports) is not bounded by the setting
    started = time.monotonic()
    run.proc.wait(timeout=120)
    elapsed = time.monotonic() - started
    log = run.finish()
    assert run.proc.returncode == 3, log
    print(f"gave up {elapsed:.1f}s after start-up (bound {give_up_bound(3):.1f}s)")
    assert elapsed <= give_up_bound(3), f"gave up after {elapsed:.1f}s, bound {give_up_bound(3):.1f}s"
    errors = error_lines(log)
    assert len(errors) == 1 and "cannot reach Kafka" in errors[0] and "gave up after 3s" in errors[0], log
    assert "Traceback" not in log
    assert table(db, "SELECT (SELECT count(*) FROM pipeline_batches), (SELECT count(*) FROM events)") == [(0, 0)]


@pytest.mark.slow  # ~30 s: two broker starts, one stop (Tansu waits ~5 s for clients to leave)
def test_follow_survives_broker_down_at_start_and_restart(tmp_path):
    port = free_port()
    state = tmp_path / "broker"
    db = tmp_path / "j.duckdb"
    run = Logged([*cli(db, port, "--follow"), "--broker-timeout", "2s"])  # each connection attempt gives up after 2 s
    try:
        # broker down: the pipeline says so, waits and retries with a growing pause
        assert run.wait_for(r"WARNING .*broker unavailable: cannot reach Kafka at 127\.0\.0\.1:\d+.*; retrying in 1s", 30), \
            "".join(run.lines)
        assert run.wait_for(r"retrying in 2s", 30), "".join(run.lines)
        assert run.proc.poll() is None
        start_broker(port=port, topics=[], state_dir=state)
        settings = KafkaSettings(bootstrap_servers=f"127.0.0.1:{port}")
        ensure_topics(settings, TOPICS.values(), 3)
        send_events(settings, TOPICS, events("a", 30))
        assert wait_until(lambda: landed(db) == 30, 90), "did not land after the broker came up"

        mark = len(run.lines)
        stop_broker(port=port, state_dir=state)  # memory-only broker: its topics are gone
        # noticed within one offset lookup (bounded by min(5 s, --broker-timeout) = 2 s) or one read
        # stage (--read-timeout, default 30 s, also bounds its connecting), plus a poll interval
        assert run.wait_for(r"broker unavailable: .*retrying in", 30 + 2 + 0.2 + EXIT_MARGIN_S, after=mark), "".join(run.lines[mark:])
        assert run.proc.poll() is None, "pipeline exited when the broker stopped"
        start_broker(port=port, topics=[], state_dir=state)
        ensure_topics(settings, TOPICS.values(), 3)
        send_events(settings, TOPICS, events("b", 20) + events("a", 5))  # a-* are re-deliveries
        assert wait_until(lambda: landed(db) == 50, 120), f"landed {landed(db)} after restart"
    finally:
        log = run.finish()
        stop_broker(port=port, state_dir=state)
    assert run.proc.returncode == 0, log[-3000:]
    assert "Traceback" not in log
    assert error_lines(log) == [], log[-3000:]  # outages are warnings: nothing failed
    assert re.search(r"topic bf\.\w+ was recreated or truncated on the broker: re-reading it", log), log[-3000:]
    assert table(db, "SELECT count(*), count(DISTINCT event_id) FROM events") == [(50, 50)]
    assert table(db, "SELECT sum(duplicates) FROM pipeline_batches") == [(5,)]
    assert table(db, "SELECT count(*) FROM pipeline_batches WHERE consumed <> landed + duplicates + dead_letters") == [(0,)]


@pytest.mark.slow  # ~30 s: a broker start and stop (Tansu waits ~5 s for the frozen client to leave)
def test_once_fails_cleanly_when_the_broker_stops_mid_run(tmp_path):
    """Batches landed before the outage stay whole; the failing one is not landed; exit 3, one line,
    within the configured timeouts.

    No race decides the outcome: the pipeline is frozen (SIGSTOP) the moment it reports batch 1,
    the broker is stopped completely, then the pipeline resumes. A batch it had read ahead before
    the outage may still land (its records are in hand; on a busy machine that took 5.7 s once);
    from the later of the resume and that landing, what it does next needs the broker (an offset
    lookup, bounded by min(5 s, --broker-timeout), or a read stage, bounded by --read-timeout,
    connecting included), so it fails within those bounds, and every batch it reported is
    exactly what landed.
    """
    port = free_port()
    state = tmp_path / "broker"
    db = tmp_path / "j.duckdb"
    read_timeout_s = broker_timeout_s = 3.0
    start_broker(port=port, topics=[], state_dir=state)
    try:
        settings = KafkaSettings(bootstrap_servers=f"127.0.0.1:{port}")
        ensure_topics(settings, TOPICS.values(), 3)
        sent = send_events(settings, TOPICS, events("m", 3000))
        run = Logged([*cli(db, port, "--once"), "--max-batch-events", "100", "--read-timeout", "3s", "--broker-timeout", "3s"])
        assert run.wait_for(r"INFO +batch 1: ", 120), "".join(run.lines)
        run.proc.send_signal(signal.SIGSTOP)
        try:
            stop_broker(port=port, state_dir=state)
        finally:
            run.proc.send_signal(signal.SIGCONT)
        resumed = time.time()
        run.proc.wait(timeout=120)  # --once ends by itself
        exited = time.time()
        log = run.finish()
    finally:
        stop_broker(port=port, state_dir=state)
    landings = [datetime.fromisoformat(at).timestamp() for at in re.findall(r"^(\S+) INFO +batch \d+: ", log, re.MULTILINE)]
    elapsed = exited - max([resumed, *landings])
    bound = read_timeout_s + min(5.0, broker_timeout_s) + EXIT_MARGIN_S
    print(f"exited {elapsed:.1f}s after the outage or the last landing after it (bound {bound:.1f}s)")
    assert elapsed <= bound, f"exited {elapsed:.1f}s after the outage, bound {bound:.1f}s; the run's log:\n{log[-3000:]}"
    assert run.proc.returncode == 3, log[-3000:]
    assert "Traceback" not in log
    errors = error_lines(log)
    assert len(errors) == 1 and "Kafka" in errors[0], log[-3000:]
    reported = [int(n) for n in re.findall(r"INFO +batch (\d+): (?:100) records", log)]
    assert reported == list(range(1, len(reported) + 1)) and len(reported) >= 1, log[-3000:]
    batches, consumed, events_landed = table(db, "SELECT count(*), sum(consumed), (SELECT count(*) FROM events) FROM pipeline_batches")[0]
    assert batches == len(reported)  # every batch reported landed, and no other
    assert consumed == 100 * batches < sent  # full batches only; the run stopped part-way
    assert events_landed == consumed  # every landed batch is whole
    assert table(db, "SELECT sum(next_offset) FROM pipeline_offsets") == [(consumed,)]


def test_a_stalled_read_inside_the_beam_stage_is_a_broker_error(broker, topics, tmp_path):
    """A KafkaReadTimeout raised inside the Beam stage comes out of the runner as BrokerUnavailable."""
    from pipelines.kafka.read import OffsetRange
    from pipelines.local.batch_stages import run_ingest
    from pipelines.local.microbatch import _broker_errors_named
    from transforms.parse import ParseLimits

    send_events(broker, topics, events("s", 3))
    beyond_the_end = [OffsetRange(topics["tickets"], p, 0, 1_000) for p in range(3)]  # never arrives: the read stalls
    stream_of_topic = {topic: stream for stream, topic in topics.items()}
    with pytest.raises(BrokerUnavailable, match=r"reading from Kafka failed: .*reading stalled for 1s"):
        _broker_errors_named(run_ingest)(beyond_the_end, broker, stream_of_topic, 0, tmp_path, [], ParseLimits(), 1.0)


def _stall_once(monkeypatch):
    """The first ingest stage of the run fails as a stalled read would; later ones run for real."""
    import pipelines.local.microbatch as microbatch
    from pipelines.kafka.read import KafkaReadTimeout

    real = microbatch.run_ingest
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("KafkaReadTimeout: reading stalled for 30s at t[0]@0 [while running 'ReadKafka/ReadRanges']") \
                from KafkaReadTimeout("reading stalled for 30s at t[0]@0")
        return real(*args, **kwargs)

    monkeypatch.setattr(microbatch, "run_ingest", flaky)
    return calls


def test_follow_retries_a_broker_error_from_inside_a_stage(broker, topics, db, monkeypatch, caplog):
    from pipelines.config.run_config import RunConfig, Stopper
    from pipelines.local.microbatch import MicroBatchRunner, RunListener
    from pipelines.storage.store import Store

    monkeypatch.setenv("CXJ_REPLICA", "off")
    calls = _stall_once(monkeypatch)
    send_events(broker, topics, events("f", 10))
    stopper = Stopper()

    class StopAfterLanding(RunListener):
        def batch_landed(self, batch, positions):
            stopper.stopping = True

    caplog.set_level(logging.INFO, logger="cxj")
    with Store(db) as store:
        runner = MicroBatchRunner(RunConfig(db=db, settings=broker, topics=topics, poll_interval_s=0.1), store)
        runner.listeners.append(StopAfterLanding())
        try:
            assert runner.follow(stopper) == 10
        finally:
            runner.close()
    assert len(calls) == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    stalled = r"broker unavailable: reading from Kafka failed: .*reading stalled.*; retrying in 1s"
    assert any(re.match(stalled, w) for w in warnings), warnings
    assert table(db, "SELECT count(*) FROM events") == [(10,)]


def test_once_reports_a_broker_error_from_inside_a_stage_in_one_line(broker, topics, db, monkeypatch, caplog):
    from pipelines.config.run_config import RunConfig
    from pipelines.local.driver import EXIT_BROKER, execute

    monkeypatch.setenv("CXJ_REPLICA", "off")
    _stall_once(monkeypatch)
    send_events(broker, topics, events("o", 10))
    caplog.set_level(logging.INFO, logger="cxj")
    assert execute(RunConfig(db=db, settings=broker, topics=topics), follow=False) == EXIT_BROKER
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is None
    assert re.match(r"reading from Kafka failed: .*reading stalled", errors[0].getMessage())
    assert table(db, "SELECT (SELECT count(*) FROM pipeline_batches), (SELECT count(*) FROM events)") == [(0, 0)]


@pytest.mark.slow  # ~15 s: its own broker, which it freezes for a second
def test_end_offsets_are_confirmed_even_when_the_broker_answers_slowly(tmp_path):
    """docs/reliability.md: the local broker reports a partition's end as the base offset of its
    last record batch, and the pipeline confirms the end by fetching from there. That must hold
    when the broker is slow to answer (a loaded machine): here it is frozen (SIGSTOP) for one
    second while the confirming fetch of an already connected reader runs. The records past the
    reported end are there, so the confirmed end must be the true one (10), not the reported (2).

    Found by tests/test_repeat_window_pipeline.py on a loaded machine: `run --once` landed 1 of 10
    records sent before it started, because the confirming poll gave up after 100 ms and then
    trusted the reported end (pipelines/kafka/offsets.py, OffsetReader._confirm_ends; fixed since).
    """
    from pipelines.kafka.local_broker import _pid_path
    from pipelines.kafka.offsets import OffsetReader

    port = free_port()
    state = tmp_path / "broker"
    start_broker(port=port, topics=[], state_dir=state)
    try:
        settings = KafkaSettings(bootstrap_servers=f"127.0.0.1:{port}")
        ensure_topics(settings, TOPICS.values(), 1)
        send_events(settings, TOPICS, events("a", 1))  # one record batch: offset 0
        pid = int(_pid_path(port, state).read_text())
        frozen = threading.Event()

        class FrozenWhileConfirming(OffsetReader):
            confirmations_frozen = 0

            def _confirm_ends(self, reported, deadline):
                if frozen.is_set():
                    self.confirmations_frozen += 1
                    os.kill(pid, signal.SIGSTOP)
                    threading.Timer(1.0, os.kill, (pid, signal.SIGCONT)).start()
                return super()._confirm_ends(reported, deadline)

        reader = FrozenWhileConfirming(settings, connect_timeout_s=5)
        try:
            partitions, _ = reader.partitions([TOPICS["tickets"]])
            assert reader.bounds(partitions)[1] == {(TOPICS["tickets"], 0): 1}  # connected, probe open
            send_events(settings, TOPICS, events("b", 9))  # more record batches: offsets 1..9
            frozen.set()
            _, ends = reader.bounds(partitions)
            frozen_confirmations = reader.confirmations_frozen
        finally:
            os.kill(pid, signal.SIGCONT)
            reader.close()
    finally:
        stop_broker(port=port, state_dir=state)
    assert ends == {(TOPICS["tickets"], 0): 10}
    assert frozen_confirmations >= 1  # the broker really was frozen while the end was confirmed
