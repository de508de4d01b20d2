"""Memory per batch is bounded by bytes, and a batch that keeps failing shrinks to its culprit.

- Large messages: ~1 MB values through `cxj run --once` (a real subprocess); its peak RSS
  (from the kernel's accounting of that child, ``wait4``) stays under a cap, and every message
  lands, a budget's worth per batch.
- Poison: a record whose landing really fails (a Kafka record timestamp far outside any date
  range: the conversion overflows in DuckDB) sits among valid ones. The failing batch is halved
  until the record is alone; it is dead-lettered as ``poison`` with the error; everything else
  lands, with exact accounting.
- Deaths: a process killed twice in a row on the same batch makes the next start split it; a
  single record the process died on twice is dead-lettered as ``poison``.
- The environment, not a record: when the stages fail whatever the records (they cannot even
  start threads), no record is blamed — the run stops with exit 4 and the offsets stay.

The sizes: CI runs 120 messages of ~1 MB under a 16 MiB budget; ``CXJ_MEMORY_MESSAGES=300``
(marked slow) runs the full case with the default budget.
"""
from __future__ import annotations

import json
import math
import os
import re
import resource
import signal
import subprocess
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import pytest

from pipelines.kafka.simulator import generate_customer_events
from tests.support import new_topics, table

ROOT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
RSS_CAP_MIB = 1536  # what the process may use at most, whatever the size of the backlog


def cxj_run(db: Path, broker, topics: dict[str, str], *extra: str, rlimit_as: Optional[int] = None,
            kill_on: Optional[str] = None, timeout: float = 600) -> tuple[int, int, str]:
    """Runs `cxj run --once` as a child; returns (exit code or -signal, peak RSS in MiB, stderr).
    ``kill_on``: SIGKILL the child as soon as a log line matches this pattern."""
    cmd = [sys.executable, "-m", "pipelines.cli", "run", "--once", "--verbose", "--db", str(db),
           "--bootstrap-servers", broker.bootstrap_servers, "--topic-tickets", topics["tickets"],
           "--topic-chats", topics["chats"], "--topic-surveys", topics["surveys"], *extra]

    def limits() -> None:
        if rlimit_as is not None:
            resource.setrlimit(resource.RLIMIT_AS, (rlimit_as, rlimit_as))

    env = dict(os.environ, CXJ_REPLICA="off")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            text=True, preexec_fn=limits)
    lines: list[str] = []

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if kill_on is not None and re.search(kill_on, line):
                proc.send_signal(signal.SIGKILL)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    reader.join(10)
    return proc.returncode, usage.ru_maxrss // 1024, "".join(lines)


def big_messages(count: int, size: int) -> list[tuple[str, bytes, bytes]]:
    """Valid ticket events of ~size bytes each (a long body: unknown fields are kept in payload)."""
    out = []
    for i in range(count):
        doc = {"event_id": f"big-{i}", "event_type": "ticket.created", "occurred_at": "2026-08-01T10:00:00Z",
               "customer_id": f"c{i % 17}", "schema_version": 1, "ticket_id": f"T{i}", "channel": "email"}
        doc["body"] = "x" * (size - len(json.dumps(doc)) - 12)
        value = json.dumps(doc).encode()
        assert size - 16 <= len(value) <= size
        out.append(("tickets", doc["customer_id"].encode(), value))
    return out


def send_compressed(broker, topics: dict[str, str], messages: list[tuple[str, bytes, bytes]], **record: Any) -> list:
    """Sends with gzip (1 MB of 'x' travels as a few KB) and returns each record's (partition, offset)."""
    from kafka import KafkaProducer

    producer = KafkaProducer(**broker.client_kwargs(), linger_ms=20, acks="all", compression_type="gzip",
                             max_request_size=4 * MIB)
    futures = [producer.send(topics[stream], key=key, value=value, **record) for stream, key, value in messages]
    producer.flush()
    placed = [(f.get(timeout=60).partition, f.get(timeout=60).offset) for f in futures]
    producer.close()
    return placed


# ------------------------------------------------------------------------------ memory


def _large_messages_case(broker, tmp_path, count: int, budget: Optional[int]) -> None:
    topics = new_topics(broker)
    size = 1_000_000
    send_compressed(broker, topics, big_messages(count, size))
    db = tmp_path / "journeys.duckdb"
    extra = ["--max-batch-bytes", str(budget)] if budget else []
    code, peak_mib, log = cxj_run(db, broker, topics, *extra)
    assert code == 0, log[-3000:]
    assert peak_mib < RSS_CAP_MIB, f"peak RSS {peak_mib} MiB"
    assert table(db, f"SELECT count(*), sum(length(payload::VARCHAR)) >= {count * (size - 16)} FROM events") == [(count, True)]
    batches = table(db, "SELECT consumed, landed, duplicates, dead_letters FROM pipeline_batches ORDER BY batch_id")
    assert all(c == landed + d + x for c, landed, d, x in batches) and sum(b[0] for b in batches) == count
    per_batch = math.ceil((budget or 32 * MIB) / size)  # the reader stops after the record that reaches the budget
    assert max(b[0] for b in batches) <= per_batch and len(batches) >= count // per_batch, batches
    print(f"{count} messages of ~1 MB, budget {(budget or 32 * MIB) // MIB} MiB: {len(batches)} batches, "
          f"peak RSS {peak_mib} MiB")


def test_large_messages_land_within_the_memory_budget(broker, tmp_path):
    _large_messages_case(broker, tmp_path, count=120, budget=16 * MIB)


@pytest.mark.slow
@pytest.mark.skipif("CXJ_MEMORY_MESSAGES" not in os.environ, reason="the full case: CXJ_MEMORY_MESSAGES=300")
def test_large_messages_full_case_default_budget(broker, tmp_path):
    _large_messages_case(broker, tmp_path, count=int(os.environ["CXJ_MEMORY_MESSAGES"]), budget=None)


# ------------------------------------------------------------------------------ poison


def valid_messages(customers: int, seed: int) -> list[tuple[str, bytes, bytes]]:
    events = generate_customer_events(customers, seed, datetime(2026, 8, 1, tzinfo=timezone.utc))
    stream = {"ticket": "tickets", "chat": "chats", "survey": "surveys"}
    return [(stream[e["event_type"].split(".")[0]], e["customer_id"].encode(), json.dumps(e).encode()) for e in events]


FAILED = re.compile(r"a batch of (\d+) records failed")


def test_records_that_fail_their_batch_are_isolated_and_dead_lettered(broker, tmp_path):
    """The poison: valid events whose Kafka record timestamp (2**62 ms) no date type can hold;
    three of them, first, in the middle and last of the partition."""
    topics = new_topics(broker, partitions=1)
    messages = valid_messages(3, 3)
    middle = len(messages) // 2
    poison_offsets = []
    poisons = []
    for i, part in enumerate((messages[:0], messages[:middle], messages[middle:])):
        send_compressed(broker, topics, part)
        poison = {"event_id": f"poison-{i}", "event_type": "ticket.created", "occurred_at": "2026-08-01T10:00:00Z",
                  "customer_id": "c-poison", "schema_version": 1, "ticket_id": f"TP{i}", "channel": "email"}
        [(_, offset)] = send_compressed(broker, topics, [("tickets", b"c-poison", json.dumps(poison).encode())],
                                        timestamp_ms=2**62)
        poison_offsets.append(offset)
        poisons.append(json.dumps(poison).encode())
    db = tmp_path / "journeys.duckdb"
    code, _, log = cxj_run(db, broker, topics, "--max-batch-events", "16")
    assert code == 0, log[-3000:]
    assert "Traceback" not in log
    # halving: each failing attempt at most half the one before, until the record is alone
    sizes = [int(n) for n in FAILED.findall(log)]
    assert sizes.count(1) == 3, sizes
    assert len(sizes) <= 3 * (2 * math.ceil(math.log2(16)) + 1), sizes
    chain: list[int] = []
    for size in sizes:  # each chain of failures ends with one record alone
        assert not chain or size <= max(1, chain[-1] // 2), sizes
        chain = [] if size == 1 else chain + [size]
    dead = table(db, 'SELECT "offset", raw, reason, detail, kafka_timestamp FROM dead_letters ORDER BY "offset"')
    assert [(o, bytes(r), reason, ts) for o, r, reason, _, ts in dead] == [
        (o, p, "poison", None) for o, p in zip(poison_offsets, poisons)]
    assert all("Overflow" in detail and str(2**62) in detail for _, _, _, detail, _ in dead), dead
    # everything else landed; every batch balances; every record is counted once
    assert table(db, "SELECT count(*) FROM events") == [(len(messages),)]
    assert table(db, "SELECT count(*) FROM pipeline_batches WHERE consumed <> landed + duplicates + dead_letters") == [(0,)]
    assert table(db, "SELECT sum(consumed), sum(landed), sum(dead_letters) FROM pipeline_batches") == [
        (len(messages) + 3, len(messages), 3)]
    assert table(db, "SELECT sum(next_offset) FROM pipeline_offsets") == [(len(messages) + 3,)]
    # the failures are on record, resolved now that their offsets have landed
    assert table(db, "SELECT count(*) FROM batch_attempts WHERE outcome = 'failed' AND NOT resolved") == [(0,)]
    assert table(db, "SELECT count(*) FROM batch_attempts WHERE outcome = 'failed'") == [(len(sizes),)]


# ------------------------------------------------------------------------------ deaths


def test_a_batch_the_process_dies_on_twice_is_split_then_a_single_record_is_dead_lettered(broker, tmp_path):
    """Killed (SIGKILL) when it starts landing: once is forgiven (same batch again), twice in a
    row on the same offsets splits the batch; a single record killed on twice is poison."""
    topics = new_topics(broker, partitions=1)
    messages = valid_messages(3, 5)[:8]
    send_compressed(broker, topics, messages)
    db = tmp_path / "journeys.duckdb"
    landing = r"batch \d+: landing"
    ranges = lambda: [json.loads(r) for (r,) in table(db, "SELECT ranges::VARCHAR FROM batch_attempts ORDER BY attempt_id")]  # noqa: E731
    for _ in range(2):
        code, _, log = cxj_run(db, broker, topics, "--max-batch-events", "8", kill_on=landing)
        assert code == -signal.SIGKILL, log[-2000:]
    assert [r[0]["to"] - r[0]["from"] for r in ranges()] == [8, 8], "a first death retries the same batch"
    code, _, log = cxj_run(db, broker, topics, "--max-batch-events", "8", kill_on=landing)
    assert code == -signal.SIGKILL
    assert "again on the same offsets" in log
    assert [r[0]["to"] - r[0]["from"] for r in ranges()] == [8, 8, 4], "two deaths in a row halve it"
    assert table(db, "SELECT count(*) FROM events") == [(0,)]
    # a single record: --max-batch-events 1, killed twice on it, then dead-lettered as poison
    single = tmp_path / "single.duckdb"
    for _ in range(2):
        code, _, _ = cxj_run(single, broker, topics, "--max-batch-events", "1", kill_on=landing)
        assert code == -signal.SIGKILL
    code, _, log = cxj_run(single, broker, topics, "--max-batch-events", "1")
    assert code == 0, log[-3000:]
    assert table(single, "SELECT \"offset\", reason, detail LIKE '%died twice%' FROM dead_letters") == [(0, "poison", True)]
    assert table(single, "SELECT count(*) FROM events") == [(len(messages) - 1,)]
    assert table(single, "SELECT sum(consumed), sum(landed) + sum(duplicates) + sum(dead_letters) FROM pipeline_batches") == [
        (len(messages), len(messages))]


def test_stages_that_fail_without_any_record_blame_no_record(broker, tmp_path):
    """Under an address-space limit too small for the runner's threads the stages fail for
    every batch; the control run without records fails too, so nothing is dead-lettered."""
    topics = new_topics(broker, partitions=1)
    send_compressed(broker, topics, valid_messages(2, 9))
    db = tmp_path / "journeys.duckdb"
    # a starved process can also hang on a thread that never starts: bounded, then killed
    code, _, log = cxj_run(db, broker, topics, rlimit_as=1024 * MIB, timeout=90)
    assert code != 0, log[-3000:]
    if db.exists():
        assert table(db, "SELECT count(*) FROM dead_letters WHERE reason = 'poison'") == [(0,)]
        assert table(db, "SELECT count(*) FROM pipeline_offsets") == [(0,)]
    if code == 4:
        errors = [line for line in log.splitlines() if " ERROR " in line]
        assert len(errors) == 1 and "no record is to blame" in errors[0], errors


def test_the_store_sets_duckdbs_memory_limit_and_names_a_bad_one(tmp_path, monkeypatch):
    """DuckDB's own default lets a long-lived writer cache up to 80% of the machine's memory;
    the store sets DEFAULT_MEMORY_LIMIT unless CXJ_DUCKDB_MEMORY_LIMIT names another size, and a
    size DuckDB cannot read fails the open with one line naming the variable, before any file is
    created (a file without the schema would make `cxj status` fail on it)."""
    import duckdb

    from pipelines.storage.store import DEFAULT_MEMORY_LIMIT, MEMORY_LIMIT_ENV, Store, StoreError

    def as_duckdb_prints(size: str) -> str:
        con = duckdb.connect()
        con.execute(f"SET memory_limit = '{size}'")
        return con.execute("SELECT current_setting('memory_limit')").fetchone()[0]

    monkeypatch.delenv(MEMORY_LIMIT_ENV, raising=False)
    with Store(tmp_path / "default.duckdb") as store:
        assert store.memory_limit() == as_duckdb_prints(DEFAULT_MEMORY_LIMIT) != as_duckdb_prints("2GB")
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "2GB")
    with Store(tmp_path / "set.duckdb") as store:
        assert store.memory_limit() == as_duckdb_prints("2GB")
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "plenty")
    with pytest.raises(StoreError, match=r"^CXJ_DUCKDB_MEMORY_LIMIT='plenty' is not a memory size DuckDB accepts"):
        Store(tmp_path / "bad.duckdb")
    assert not (tmp_path / "bad.duckdb").exists(), "a refused limit left a database file without a schema behind"


def test_a_landing_out_of_memory_blames_no_record_and_loses_none(broker, tmp_path, monkeypatch):
    """A landing that runs out of memory is halved like any failing batch (a smaller one may
    fit); when a single record still does not fit, the run stops with one line naming the
    memory limit: that record is not dead-lettered as poison, nothing is landed, and a run with
    memory enough lands every record."""
    from pipelines.config.run_config import RunConfig
    from pipelines.local.microbatch import MicroBatchRunner
    from pipelines.storage.store import Store, StoreError

    monkeypatch.setenv("CXJ_REPLICA", "off")
    monkeypatch.setenv("CXJ_INGEST_AHEAD", "0")
    real_land = Store.land

    def starved_land(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        """The landing gets 2 MB, whatever the batch's records."""
        before = self.memory_limit()
        self.con.execute("SET memory_limit = '2MB'")
        try:
            return real_land(self, *args, **kwargs)
        finally:
            self.con.execute(f"SET memory_limit = '{before}'")

    monkeypatch.setattr(Store, "land", starved_land)
    topics = new_topics(broker, partitions=1)
    messages = valid_messages(3, 12)
    send_compressed(broker, topics, messages)
    db = tmp_path / "journeys.duckdb"
    config = RunConfig(db=db, settings=broker, topics=topics)
    with Store(db) as store:
        runner = MicroBatchRunner(config, store)
        try:
            with pytest.raises(StoreError, match=r"ran out of memory even for a batch of one record .*CXJ_DUCKDB_MEMORY_LIMIT"):
                runner.run_once()
        finally:
            runner.close()
    monkeypatch.setattr(Store, "land", real_land)
    assert table(db, "SELECT count(*) FROM events") == [(0,)]
    assert table(db, "SELECT count(*) FROM dead_letters") == [(0,)], "a record was blamed for the store's memory"
    assert table(db, "SELECT count(*) FROM pipeline_offsets") == [(0,)]
    # the batch was halved down to one record first (a smaller batch could have fitted)
    assert table(db, "SELECT min(records) FROM batch_attempts")[0][0] == 1
    with Store(db) as store:
        runner = MicroBatchRunner(config, store)
        try:
            landed = runner.run_once()
        finally:
            runner.close()
    assert sum(b.consumed for b in landed) == len(messages)
    assert table(db, "SELECT count(*), count(DISTINCT event_id) FROM events") == [(len(messages), len(messages))]
    assert table(db, "SELECT count(*) FROM dead_letters") == [(0,)]
