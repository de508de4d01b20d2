"""Reading the next batch ahead in a second process lands exactly what one batch after another lands.

While a backlog is read, `run` starts the next batch's ingest in a worker process as soon as the
current batch's reads are known; the next plan uses those staged files only if they are still a
valid plan (pipelines/local/ingest_ahead.py). Real broker, real DuckDB files, the real worker
process; messy input (re-deliveries, conflicting copies, garbage, late events) in small batches,
so that journeys change across batches. Each run is compared table by table, batch ids and
offsets included, with a run that reads one batch after another.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import pytest

import pipelines.local.microbatch as microbatch
from pipelines.config.run_config import RunConfig, Stopper
from pipelines.kafka.simulator import generate_customer_events, to_messages
from pipelines.local.ingest_ahead import IngestAhead
from pipelines.local.microbatch import MicroBatchRunner, RunListener
from pipelines.storage.store import Store
from tests.support import new_topics, send, table
from tests.test_batch_accounting import TABLES, conflicting, landed_content, snapshot

ROOT = Path(__file__).resolve().parent.parent
BATCH = 60
WORKER = "pipelines.local.ingest_ahead"


@pytest.fixture(scope="module")
def backlog(broker):
    """Topics holding a messy backlog of several hundred messages, and how many were sent."""
    events = generate_customer_events(30, 11, datetime(2026, 8, 1, tzinfo=timezone.utc))
    messages = to_messages(events, 11, out_of_order=0.05, duplicates=0.1, malformed=0.05)
    messages += conflicting(messages, random.Random(11), 6)
    topics = new_topics(broker)
    send(broker, topics, messages)
    return topics, len(messages)


@pytest.fixture(autouse=True)
def _every_backlog_is_read_ahead(monkeypatch):
    monkeypatch.setenv("CXJ_REPLICA", "off")  # the read replica is not under test here
    monkeypatch.setattr(microbatch, "READ_AHEAD_MIN_BACKLOG", 0)


def _workers() -> list[int]:
    """Pids of this process's read-ahead workers that are still running."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        if WORKER in cmdline and fields.get("PPid", "").strip() == str(os.getpid()) and fields.get("State", "")[:1] != "Z":
            pids.append(int(entry.name))
    return pids


def _run(db: Path, broker, topics: dict[str, str], ahead: bool, monkeypatch,  # type: ignore[no-untyped-def]
         listener: RunListener | None = None, shared: list[int] | None = None, **config) -> tuple[int, int, int]:
    """(records consumed, batches, batches read ahead) of one `run --once`; the number of
    batches whose assembly the worker shared is appended to ``shared``."""
    monkeypatch.setenv("CXJ_INGEST_AHEAD", "1" if ahead else "0")
    with Store(db) as store:
        runner = MicroBatchRunner(RunConfig(db=db, settings=broker, topics=topics, max_batch_events=BATCH, **config),
                                  store)
        if listener is not None:
            runner.listeners.append(listener)
        try:
            batches = runner.run_once()
        finally:
            runner.close()
        assert not _workers(), "the worker outlived the run"
        if shared is not None:
            shared.append(runner.batches_assembled_on_both_cores)
        return sum(b.consumed for b in batches), len(batches), runner.batches_read_ahead


@pytest.fixture(scope="module")
def one_after_another(backlog, broker, tmp_path_factory):
    """The reference: the same backlog landed without reading ahead."""
    topics, sent = backlog
    db = tmp_path_factory.mktemp("sequential") / "sequential.duckdb"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CXJ_REPLICA", "off")
        consumed, batches, ahead = _run(db, broker, topics, False, patch)
    assert (consumed, ahead) == (sent, 0) and batches >= 5, (consumed, batches)
    return snapshot(db)


def test_every_batch_after_the_first_is_read_ahead_and_lands_the_same(backlog, broker, tmp_path, monkeypatch,
                                                                        one_after_another):
    topics, sent = backlog
    db = tmp_path / "ahead.duckdb"
    consumed, batches, ahead = _run(db, broker, topics, True, monkeypatch)
    assert consumed == sent
    assert ahead == batches - 1, "the last batch has nothing behind it; every other one reads the next ahead"
    assert snapshot(db) == one_after_another


def test_a_batch_lands_on_one_thread_while_the_next_is_read_ahead(backlog, broker, tmp_path, monkeypatch,
                                                                   one_after_another):
    """While the worker reads the next batch, the landing leaves it the other core: DuckDB runs
    on one thread then, and on its usual number for the last batch (nothing behind it). (A
    read-ahead of 60 records may be done before a landing starts: one such landing suffices.)"""
    threads_at_landing: list[int] = []  # what each landing's transaction ran with
    land, fit_threads = Store.land, Store.fit_threads
    landing_begins = [False]

    def land_observed(store: Store, *args, **kwargs):  # type: ignore[no-untyped-def]
        landing_begins[0] = True  # the landing's first fit_threads is the one before its transaction
        return land(store, *args, **kwargs)

    def fit_threads_observed(store: Store) -> int:
        threads = fit_threads(store)
        if landing_begins[0]:
            threads_at_landing.append(threads)
            landing_begins[0] = False
        return threads

    monkeypatch.setattr(Store, "land", land_observed)
    monkeypatch.setattr(Store, "fit_threads", fit_threads_observed)
    usual = int(duckdb.connect().execute("SELECT current_setting('threads')").fetchone()[0])
    topics, sent = backlog
    db = tmp_path / "one-thread.duckdb"
    consumed, batches, ahead = _run(db, broker, topics, True, monkeypatch)
    assert consumed == sent and ahead == batches - 1
    assert len(threads_at_landing) == batches
    assert 1 in threads_at_landing[:-1] and threads_at_landing[-1] == usual
    assert snapshot(db) == one_after_another


def test_reads_cut_short_by_the_byte_budget_are_read_ahead_from_where_they_stopped(backlog, broker, tmp_path,
                                                                                    monkeypatch):
    """A byte budget stops each batch's reads before its planned stops: the next batch is read
    ahead from where the reads really stopped (not where they were planned to), is adopted,
    and the run lands what one batch after another lands with the same budget.

    Where the budget cuts depends on the order in which the broker hands over the records of
    different partitions, which Kafka does not fix: the two runs may cut the records into
    batches differently, so they are compared without the batch columns. A read-ahead started
    from the planned stops would skip records and change the landed content."""
    topics, sent = backlog
    budget = 6_000  # bytes of message values per batch: far less than BATCH records hold
    reference = tmp_path / "budget-sequential.duckdb"
    consumed, batches, ahead = _run(reference, broker, topics, False, monkeypatch, max_batch_bytes=budget)
    assert (consumed, ahead) == (sent, 0)
    assert batches > -(-sent // BATCH), "the budget did not cut any batch short of its planned records"
    db = tmp_path / "budget-ahead.duckdb"
    consumed, batches, ahead = _run(db, broker, topics, True, monkeypatch, max_batch_bytes=budget)
    assert consumed == sent and batches > -(-sent // BATCH)
    # the batches planned to reach the end that the budget cut short have nothing read ahead
    # behind them (the plan saw no backlog); every other one is followed by a read-ahead
    assert batches // 2 <= ahead < batches
    attempts = table(db, "SELECT count(*) FROM batch_attempts")  # one attempt per batch: nothing failed
    assert attempts == [(batches,)]
    assert landed_content(db) == landed_content(reference)


class KillTheWorker(RunListener):
    """Kills the worker (SIGKILL) in every other batch, once the batch's own ingest is done:
    the worker has just been given the next batch to read ahead."""

    def __init__(self) -> None:
        self.killed = 0
        self.batches = 0

    def staged(self, batch_id: int, staging: Path, stage: str) -> None:
        if stage == "assemble":
            self.batches += 1
            if self.batches % 2:
                for pid in _workers():
                    os.kill(pid, signal.SIGKILL)
                    self.killed += 1


def test_a_worker_killed_while_it_reads_ahead_costs_time_not_records(backlog, broker, tmp_path, monkeypatch,
                                                                      one_after_another):
    topics, sent = backlog
    db = tmp_path / "killed.duckdb"
    killer = KillTheWorker()
    consumed, batches, ahead = _run(db, broker, topics, True, monkeypatch, killer)
    assert killer.killed >= 2, "the sabotage would prove nothing"
    assert consumed == sent and 0 < ahead < batches - 1
    assert snapshot(db) == one_after_another


def test_a_backlog_read_ahead_after_a_restart_resumes_where_the_landed_offsets_say(backlog, broker, tmp_path,
                                                                                   monkeypatch, one_after_another):
    """A run stopped half way (its worker had read the next batch ahead, never landed): the
    next run starts from the landed offsets and lands the rest exactly once."""
    topics, sent = backlog
    db = tmp_path / "restarted.duckdb"

    class StopHalfWay(RunListener):
        def batch_landed(self, batch, positions) -> None:  # type: ignore[no-untyped-def]
            if batch.batch_id == 3:
                raise KeyboardInterrupt  # as Ctrl-C would, between batches

    with pytest.raises(KeyboardInterrupt):
        _run(db, broker, topics, True, monkeypatch, StopHalfWay())
    assert table(db, "SELECT max(batch_id) FROM pipeline_batches") == [(3,)]
    consumed, _, ahead = _run(db, broker, topics, True, monkeypatch)
    assert ahead >= 1
    assert consumed + table(db, "SELECT sum(consumed) FROM pipeline_batches WHERE batch_id <= 3")[0][0] == sent
    assert snapshot(db) == one_after_another


SCRIPT = """
import json, sys
from pathlib import Path
import pipelines.local.microbatch as microbatch
from pipelines.config.run_config import RunConfig
from pipelines.kafka.settings import KafkaSettings
from pipelines.local.microbatch import MicroBatchRunner
from pipelines.storage.store import Store

# no `if __name__ == "__main__":` guard: the worker must not run this script a second time
microbatch.READ_AHEAD_MIN_BACKLOG = 0
db, servers, topics = Path(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
with Store(db) as store:
    runner = MicroBatchRunner(RunConfig(db=db, settings=KafkaSettings(bootstrap_servers=servers), topics=topics,
                                        max_batch_events=%d), store)
    batches = runner.run_once()
    runner.close()
print(json.dumps({"consumed": sum(b.consumed for b in batches), "ahead": runner.batches_read_ahead}))
""" % BATCH


def test_a_script_without_a_main_guard_runs_once(backlog, broker, tmp_path, one_after_another):
    topics, sent = backlog
    script = tmp_path / "embedded_run"  # a script like any other (python runs it whatever its suffix)
    script.write_text(textwrap.dedent(SCRIPT))
    db = tmp_path / "script.duckdb"
    done = subprocess.run([sys.executable, str(script), str(db), broker.bootstrap_servers, json.dumps(topics)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "CXJ_REPLICA": "off"})
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["consumed"] == sent and result["ahead"] >= 1, result
    assert snapshot(db) == one_after_another


def test_the_reference_is_not_trivial(one_after_another):
    """The comparison above would prove little on an empty or dead-letter-only backlog."""
    assert len(one_after_another["events"]) > 200 and len(one_after_another["journeys"]) > 20
    assert one_after_another["dead_letters"] and one_after_another["event_conflicts"]
    assert set(TABLES) <= set(one_after_another)


def test_batches_assembled_on_both_cores_land_the_same(backlog, broker, tmp_path, monkeypatch, one_after_another):
    """Once the worker runs, it assembles part of each batch's history partitions while this
    process assembles the rest, into the same staging directory."""
    monkeypatch.setattr(microbatch, "ASSEMBLY_SHARE_MIN_EVENTS", 0)
    topics, sent = backlog
    db = tmp_path / "shared.duckdb"
    shared: list[int] = []
    consumed, batches, ahead = _run(db, broker, topics, True, monkeypatch, shared=shared)
    assert consumed == sent and ahead == batches - 1
    # the worker is started while the first batch ingests (a backlog waits behind it), so every
    # batch is shared, the first one included (each batch's history has two partitions or more)
    assert shared[0] == batches, (shared, batches)
    assert snapshot(db) == one_after_another


def _sabotage_shares(monkeypatch, fault: str) -> list:  # type: ignore[no-untyped-def]
    """Every assembly share sent to the worker from now on is sabotaged: with ``killed`` the
    worker is SIGKILLed 0, 0.05, 0.15, 0.3 or 0.6 s after the share is sent (before it starts,
    while it assembles or writes its files), with ``failed`` its stage raises. Returns the list
    the sabotaged shares are appended to."""
    real_share = IngestAhead.assemble_share
    delays = iter([0.0, 0.05, 0.15, 0.3, 0.6] * 10)
    sabotaged: list = []

    def sabotaged_share(self, history_files, **stage):  # type: ignore[no-untyped-def]
        if fault == "failed":
            stage = {**stage, "beam_args": ["--runner=NoSuchRunner"]}  # the worker's stage raises
        sent = real_share(self, history_files, **stage)
        if sent:
            sabotaged.append(history_files)
            if fault == "killed":
                threading.Timer(next(delays), os.kill, (self._process.pid, signal.SIGKILL)).start()
        return sent

    monkeypatch.setattr(IngestAhead, "assemble_share", sabotaged_share)
    return sabotaged


@pytest.mark.parametrize("fault", ["killed", "failed"])
def test_a_share_the_worker_does_not_finish_is_assembled_here(backlog, broker, tmp_path, monkeypatch,
                                                               one_after_another, fault):
    """The worker is SIGKILLed at different moments of its share (before it starts, while it
    assembles or writes its files), or its share fails; this process then assembles those
    partitions itself, over whatever the worker left, and lands what one batch after another
    lands."""
    monkeypatch.setattr(microbatch, "ASSEMBLY_SHARE_MIN_EVENTS", 0)
    sabotaged = _sabotage_shares(monkeypatch, fault)
    topics, sent = backlog
    db = tmp_path / f"{fault}.duckdb"
    shared: list[int] = []
    consumed, batches, _ = _run(db, broker, topics, True, monkeypatch, shared=shared)
    assert len(sabotaged) >= 3, "the sabotage would prove nothing"
    assert consumed == sent
    # every failed share, and at least the one killed at once, was assembled here instead
    assert shared[0] == 0 if fault == "failed" else shared[0] < len(sabotaged)
    assert table(db, "SELECT count(*) FROM batch_attempts")[0][0] == batches, "a share's fault failed a batch"
    assert snapshot(db) == one_after_another


def test_a_batch_that_fails_after_the_next_was_read_ahead_skips_nothing(broker, tmp_path, monkeypatch):
    """A record whose Kafka timestamp (2**62 ms) no date type holds fails its batch after the
    next batch was read ahead from beyond it. The failed batch is split until that record is
    dead-lettered alone; what was read ahead starts past offsets that never landed, so it must
    not be used: every other record lands exactly once, as when reading one batch after another."""
    from tests.test_memory_budget import send_compressed, valid_messages

    topics = new_topics(broker, partitions=1)
    messages = valid_messages(16, 13)
    middle = len(messages) // 2
    send_compressed(broker, topics, messages[:middle])
    poison = {"event_id": "poison", "event_type": "ticket.created", "occurred_at": "2026-08-01T10:00:00Z",
              "customer_id": "c-poison", "schema_version": 1, "ticket_id": "TP", "channel": "email"}
    [(_, poison_offset)] = send_compressed(broker, topics, [("tickets", b"c-poison", json.dumps(poison).encode())],
                                           timestamp_ms=2**62)
    send_compressed(broker, topics, messages[middle:])
    sent = len(messages) + 1
    assert poison_offset > BATCH, "the poison must sit in a batch after the first, once one was read ahead"
    results = {}
    for ahead in (False, True):
        db = tmp_path / f"ahead-{ahead}.duckdb"
        consumed, _, read_ahead = _run(db, broker, topics, ahead, monkeypatch)
        assert consumed == sent and (read_ahead > 0) == ahead
        assert table(db, 'SELECT "offset", reason FROM dead_letters') == [(poison_offset, "poison")]
        assert table(db, "SELECT count(*), count(DISTINCT event_id) FROM events") == [(len(messages), len(messages))]
        results[ahead] = snapshot(db)
    assert results[True] == results[False]


# The tables of a following run, without what differs between two runs of the same rounds on
# topics of their own: the topics' names and the records' Kafka timestamps.
_TOPIC = "regexp_replace(topic, '^[^.]*[.]', '')"
FOLLOWED = {
    "events": "SELECT * EXCLUDE (landed_at, source_topic, kafka_timestamp) FROM events ORDER BY event_id",
    "journeys": TABLES["journeys"],
    "journey_events": TABLES["journey_events"],
    "journey_metrics": "SELECT * FROM journey_metrics ORDER BY journey_id",
    "journey_handoffs": "SELECT * FROM journey_handoffs ORDER BY journey_id, seq",
    "journey_revisions": "SELECT * EXCLUDE (revised_at) FROM journey_revisions ORDER BY batch_id, journey_id",
    "dead_letters": f'SELECT {_TOPIC}, * EXCLUDE (topic, kafka_timestamp, landed_at) FROM dead_letters ORDER BY ALL',
    "offsets": f'SELECT {_TOPIC}, "partition", next_offset, batch_id FROM pipeline_offsets ORDER BY ALL',
    "batches": TABLES["batches"],
    "event_conflicts": "SELECT * EXCLUDE (detected_at) FROM event_conflicts ORDER BY ALL",
    "duplicate_deliveries": f"SELECT {_TOPIC}, * EXCLUDE (topic, kafka_timestamp) FROM duplicate_deliveries ORDER BY ALL",
}


class _RoundsSender(RunListener):
    """Sends the next round of messages once every record sent so far has landed, as a steady
    producer would between two batches of `run --follow`; stops the run after the last round.
    So each batch reads exactly one round, nothing waits behind it, and nothing is read ahead."""

    def __init__(self, broker, topics: dict[str, str], rounds: list[list], stopper: Stopper) -> None:  # type: ignore[no-untyped-def]
        self.broker, self.topics, self.rounds, self.stopper = broker, topics, list(rounds), stopper
        self.batches = 0
        self.next_round()

    def next_round(self) -> None:
        send(self.broker, self.topics, self.rounds.pop(0))

    def batch_landed(self, batch, positions) -> None:  # type: ignore[no-untyped-def]
        self.batches += 1
        assert positions.lag == 0, "a batch read less than its round: the runs below would cut rounds differently"
        if self.rounds:
            self.next_round()
        else:
            self.stopper.stopping = True


def _rounds(customers: int, seed: int, large: int) -> list[list]:
    """A small first round (too small to share), then ``large`` rounds of at least 60 messages;
    customers recur across rounds, so journeys change."""
    events = generate_customer_events(customers, seed, datetime(2026, 8, 1, tzinfo=timezone.utc))
    messages = to_messages(events, seed, out_of_order=0.05, duplicates=0.1, malformed=0.05)
    size = (len(messages) - 20) // large
    rounds = [messages[:20]] + [messages[20 + i * size:20 + (i + 1) * size] for i in range(large - 1)]
    rounds.append(messages[20 + (large - 1) * size:])
    assert min(len(r) for r in rounds[1:]) >= 60 > len(rounds[0])
    return rounds


def _follow(broker, db: Path, rounds: list[list], ahead: bool, monkeypatch) -> tuple[dict, int, bool]:  # type: ignore[no-untyped-def]
    """`run --follow` fed ``rounds`` one after another: (its tables, batches shared with the
    worker, whether the worker ran at the end)."""
    monkeypatch.setenv("CXJ_INGEST_AHEAD", "1" if ahead else "0")
    topics = new_topics(broker)
    stopper = Stopper()
    sender = _RoundsSender(broker, topics, rounds, stopper)
    with Store(db) as store:
        runner = MicroBatchRunner(RunConfig(db=db, settings=broker, topics=topics), store)
        runner.listeners.append(sender)
        try:
            runner.follow(stopper)
            assert runner.batches_read_ahead == 0
            assert (runner._ahead is not None) == ahead, "the worker is used only when enabled"
            shared = runner.batches_assembled_on_both_cores
            warm = runner._ahead is not None and runner._ahead.warm
        finally:
            runner.close()
    assert not _workers(), "the worker outlived the run"
    assert sender.batches == len(rounds)
    assert table(db, "SELECT count(*) FROM batch_attempts")[0][0] == len(rounds), "a share's fault failed a batch"
    assert table(db, "SELECT count(*) FROM journey_revisions")[0][0] > 0, "no journey changed across rounds"
    return snapshot(db, FOLLOWED), shared, warm


def test_a_following_run_shares_assembly_once_its_histories_are_large(broker, tmp_path, monkeypatch):
    """`run --follow` at a steady rate reads all that arrived in each batch, so no backlog ever
    starts the worker. The first batch whose history is large enough to share starts it for
    shares alone; that batch is not shared (the worker may still be importing), every later
    large one is, and the run lands exactly what the same rounds land without a worker."""
    monkeypatch.setattr(microbatch, "ASSEMBLY_SHARE_MIN_EVENTS", 60)
    rounds = _rounds(30, 17, 3)
    alone, not_shared, warm_alone = _follow(broker, tmp_path / "alone.duckdb", rounds, False, monkeypatch)
    with_worker, shared, warm = _follow(broker, tmp_path / "worker.duckdb", rounds, True, monkeypatch)
    assert (warm_alone, warm) == (False, True), "the worker runs only when enabled"
    # the first large round started the worker; the two after it were shared
    assert (not_shared, shared) == (0, len(rounds) - 2)
    assert with_worker == alone


@pytest.mark.parametrize("fault", ["killed", "failed"])
def test_a_following_runs_share_the_worker_does_not_finish_is_assembled_here(broker, tmp_path, monkeypatch, fault):
    """The shares of `run --follow`, sabotaged: the worker SIGKILLed at different moments of a
    share, or its share failing. Each batch then assembles those partitions itself, a killed
    worker is started again for the batches after, and the run lands exactly what the same
    rounds land without a worker; no batch fails for it."""
    monkeypatch.setattr(microbatch, "ASSEMBLY_SHARE_MIN_EVENTS", 60)
    rounds = _rounds(60, 23, 7)
    alone, _, _ = _follow(broker, tmp_path / "alone.duckdb", rounds, False, monkeypatch)
    sabotaged = _sabotage_shares(monkeypatch, fault)
    sabotaged_run, shared, _ = _follow(broker, tmp_path / f"{fault}.duckdb", rounds, True, monkeypatch)
    assert len(sabotaged) >= 2, "the sabotage would prove nothing"
    # every failed share, and at least the one killed at once, was assembled here instead
    assert shared == 0 if fault == "failed" else shared < len(sabotaged)
    assert sabotaged_run == alone


def test_run_once_starts_no_worker_for_a_single_batch(broker, tmp_path, monkeypatch):
    """`run --once` of one batch with nothing behind it would pay the worker's start-up for a
    share it could not use: however large its history, no worker is started."""
    monkeypatch.setattr(microbatch, "ASSEMBLY_SHARE_MIN_EVENTS", 1)
    monkeypatch.setenv("CXJ_INGEST_AHEAD", "1")
    topics = new_topics(broker)
    send(broker, topics, to_messages(generate_customer_events(10, 5, datetime(2026, 8, 1, tzinfo=timezone.utc)), 5))
    db = tmp_path / "once.duckdb"
    with Store(db) as store:
        runner = MicroBatchRunner(RunConfig(db=db, settings=broker, topics=topics), store)
        try:
            batches = runner.run_once()
            assert len(batches) == 1 and batches[0].consumed > 1
            assert runner._ahead is not None and not runner._ahead.warm
            assert runner.batches_assembled_on_both_cores == 0
        finally:
            runner.close()
