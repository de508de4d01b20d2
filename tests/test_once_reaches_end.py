"""`cxj run --once` lands everything up to the true end offsets, every time.

The local broker (Tansu 0.6) reports a partition's end offset as the base offset of its last
record batch, so the pipeline confirms ends from a fetch's high watermark and trusts them only
after two consecutive complete answers. These tests send fresh data (random sizes, producer
batches of varying length, all three topics, duplicates and malformed records) and then run
`--once`, round after round, and require exact accounting after every round.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest

from pipelines.kafka.offsets import OffsetReader
from tests.support import run_once, send, table

ROUNDS = int(os.environ.get("CXJ_ONCE_ROUNDS", "20"))
ONCE_ROUNDS = int(os.environ.get("CXJ_ONCE_RUNS", "10"))  # Beam runs: ~1-2 s each on an idle machine
SEED = int(datetime.now(timezone.utc).timestamp()) % 100_000


def true_ends(settings, topics):
    """End offsets read record by record, independent of the pipeline's confirmation."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(**settings.client_kwargs(), group_id=None, enable_auto_commit=False,
                             auto_offset_reset="earliest", fetch_max_wait_ms=50)
    try:
        tps = [TopicPartition(t, p) for t in topics.values() for p in sorted(consumer.partitions_for_topic(t))]
        consumer.assign(tps)
        consumer.seek_to_beginning()
        ends = {(tp.topic, tp.partition): 0 for tp in tps}
        empty = 0
        while empty < 5:
            polled = consumer.poll(200)
            empty = 0 if polled else empty + 1
            for tp, records in polled.items():
                ends[(tp.topic, tp.partition)] = records[-1].offset + 1
        return ends
    finally:
        consumer.close()


def messages(rng: random.Random, tag: str, sent_ids: list[str]) -> tuple[list[tuple[str, bytes, bytes]], int, int]:
    """A random round: new events on all three streams, some re-sent ids, some malformed records.
    Returns (messages, new ids, malformed)."""
    start = datetime(2026, 11, 1, tzinfo=timezone.utc)
    out: list[tuple[str, bytes, bytes]] = []
    new = rng.randint(1, 300)
    for i in range(new):
        stream = rng.choice(["tickets", "chats", "surveys"])
        event = {"event_id": f"{tag}-{i}", "event_type": {"tickets": "ticket.created", "chats": "chat.started",
                                                            "surveys": "survey.responded"}[stream],
                 "customer_id": f"c{rng.randint(0, 40)}", "schema_version": 1,
                 "occurred_at": (start + timedelta(seconds=rng.randint(0, 10**6))).isoformat()}
        event.update({"tickets": {"ticket_id": f"T{tag}{i}", "channel": "email"},
                      "chats": {"chat_id": f"C{tag}{i}", "channel": "chat"},
                      "surveys": {"survey_id": f"S{tag}{i}", "ticket_id": f"T{tag}{i}", "csat": 4}}[stream])
        out.append((stream, event["customer_id"].encode(), json.dumps(event).encode()))
    resent = [("tickets", b"re", json.dumps({"event_id": i, "event_type": "ticket.created", "customer_id": "cr",
                                              "schema_version": 1, "occurred_at": start.isoformat(),
                                              "ticket_id": "TR", "channel": "email"}).encode())
              for i in rng.sample(sent_ids, min(len(sent_ids), rng.randint(0, 5)))]
    malformed = [(rng.choice(["tickets", "chats", "surveys"]), b"bad", b"{not json") for _ in range(rng.randint(0, 3))]
    everything = out + resent + malformed
    rng.shuffle(everything)
    return everything, new, len(malformed)


@pytest.mark.slow  # CI: 20 rounds; `make soak`: CXJ_ONCE_ROUNDS
def test_confirmed_end_offsets_are_the_true_ones(broker, topics):
    """Straight after sending, `OffsetReader.bounds` gives exactly the record-by-record ends,
    also when asked again and again on the same connection (as a run does per batch: the old
    confirmation sometimes saw one empty poll there and kept a stale end, ~1 call in 90)."""
    rng = random.Random(SEED)
    reader = OffsetReader(broker, connect_timeout_s=5.0)
    try:
        partitions, _ = reader.partitions(topics.values())
        for r in range(ROUNDS):
            batch, _, _ = messages(rng, f"e{r}", [])
            send(broker, topics, batch)
            answers = [reader.bounds(partitions)[1] for _ in range(5)]
            truth = true_ends(broker, topics)
            assert all(ends == truth for ends in answers), f"seed {SEED}, round {r}: {answers} != {truth}"
    finally:
        reader.close()


@pytest.mark.slow  # CI: 10 runs; `make soak`: CXJ_ONCE_RUNS
def test_many_rounds_of_send_then_once_account_for_every_message(broker, topics, db):
    rng = random.Random(SEED + 1)
    sent = new_total = dead_total = 0
    sent_ids: list[str] = []
    for r in range(ONCE_ROUNDS):
        batch, new, malformed = messages(rng, f"o{r}", sent_ids)
        sent += send(broker, topics, batch)
        new_total += new
        dead_total += malformed
        sent_ids += [f"o{r}-{i}" for i in range(new)]
        run_once(db, broker, topics, max_batch_events=rng.choice([50, 200, 5000]))
        landed, dups, dead, consumed = table(
            db, "SELECT sum(landed), sum(duplicates), sum(dead_letters), sum(consumed) FROM pipeline_batches")[0]
        where = f"seed {SEED + 1}, round {r}"
        assert (landed, dead, consumed) == (new_total, dead_total, sent), where
        assert landed + dups + dead == sent, where
        stored = dict(((t, p), o) for t, p, o in table(db, 'SELECT topic, "partition", next_offset FROM pipeline_offsets'))
        ends = true_ends(broker, topics)
        assert {k: stored.get(k, 0) for k in ends} == ends, where  # no lag left anywhere
    assert table(db, "SELECT count(*), count(DISTINCT event_id) FROM events") == [(new_total, new_total)]


def test_once_as_a_command_reports_caught_up_only_at_the_end(broker, topics, db):
    """The real `cxj run --once` process, three rounds: exit 0, and "caught up" is true."""
    rng = random.Random(SEED + 2)
    sent = 0
    for r in range(3):
        batch, _, _ = messages(rng, f"c{r}", [])
        sent += send(broker, topics, batch)
        result = subprocess.run(
            [sys.executable, "-m", "pipelines.cli", "run", "--once", "--db", str(db), "--bootstrap-servers",
             broker.bootstrap_servers, "--topic-tickets", topics["tickets"], "--topic-chats", topics["chats"],
             "--topic-surveys", topics["surveys"], "--max-batch-events", "100"],
            capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "caught up" in result.stderr
        assert table(db, "SELECT sum(consumed) FROM pipeline_batches") == [(sent,)], result.stderr[-3000:]
        status = subprocess.run(
            [sys.executable, "-m", "pipelines.cli", "status", "--json", "--db", str(db), "--bootstrap-servers",
             broker.bootstrap_servers, "--topic-tickets", topics["tickets"], "--topic-chats", topics["chats"],
             "--topic-surveys", topics["surveys"]], capture_output=True, text=True, timeout=120)
        assert json.loads(status.stdout)["total_lag"] == 0, status.stdout


def test_once_reads_on_when_a_plan_under_reports_the_ends_it_was_given_at_start(broker, topics, db, monkeypatch, caplog):
    """`--once` returns only when everything below the end offsets seen at start is landed. A
    plan that found nothing to read while its ends fell short of those targets (an end reported
    too low mid-run) is not taken at its word: the run looks the ends up again and reads on. The
    plan's look-up is made to report the landed offsets as the ends, once, after the first batch."""
    import logging

    from pipelines.config.run_config import RunConfig
    from pipelines.local.microbatch import MicroBatchRunner
    from pipelines.storage.store import Store

    monkeypatch.setenv("CXJ_REPLICA", "off")
    rng = random.Random(SEED)
    sent = new = malformed = 0
    while sent < 30:  # enough records for three batches
        batch, round_new, round_malformed = messages(rng, f"under{sent}", [])
        sent += send(broker, topics, batch)
        new, malformed = new + round_new, malformed + round_malformed
    real_bounds = OffsetReader.bounds
    calls = []

    with Store(db) as store:
        def under_reporting_bounds(self, partitions):  # type: ignore[no-untyped-def]
            beginnings, ends = real_bounds(self, partitions)
            calls.append(1)
            if len(calls) == 3:  # the start's targets, the first plan, then this plan: "nothing left"
                landed = store.landed_offsets()
                ends = {k: min(end, landed.get(k, 0)) for k, end in ends.items()}
            return beginnings, ends

        monkeypatch.setattr(OffsetReader, "bounds", under_reporting_bounds)
        caplog.set_level(logging.WARNING, logger="cxj")
        runner = MicroBatchRunner(RunConfig(db=db, settings=broker, topics=topics, max_batch_events=max(1, sent // 3)), store)
        try:
            batches = runner.run_once()
        finally:
            runner.close()
    assert len(calls) > 3, "the under-reporting look-up never happened"
    assert sum(b.consumed for b in batches) == sent
    assert table(db, "SELECT count(*) FROM events") == [(new,)]
    assert table(db, "SELECT count(*) FROM dead_letters") == [(malformed,)]
    assert any("still unread" in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]
