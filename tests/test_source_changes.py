"""The broker's log changes under the pipeline: it never skips silently.

Against a real broker of its own (started and restarted here on a free port with its own state
directory; the session broker is shared by other tests). The local broker (Tansu) keeps data in
memory only, so a restart recreates every topic with offsets starting again at 0; topics are also
deleted and recreated with fewer or more partitions. Every test checks exact accounting for the
log as it is now: every record of it is consumed once, landed or counted as a duplicate or a dead
letter, and every change of the log is logged and stored in source_resets.

Retention cannot be produced here: Tansu 0.6 drops the connection on DeleteRecords and keeps no
retention (a topic created with retention.ms=1000 and retention.bytes=100 still starts at offset 0
seconds later), and a recreated topic always starts at 0. The retention decision is covered by
pipelines/kafka/source_log_test.py; its record and its effect on `cxj status` by the last test here.
"""
from __future__ import annotations

import json
import logging
import random
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

import pytest

from pipelines.kafka.local_broker import ensure_topics, start_broker, stop_broker
from pipelines.kafka.settings import KafkaSettings
from pipelines.kafka.source_log import RETENTION, SourceChange
from pipelines.storage.store import Store
from tests.support import free_port, run_once, send, table

SEED = int(datetime.now(timezone.utc).timestamp()) % 100_000  # printed on failure via the assertion messages


class OwnBroker:
    """A broker this module may stop and start at will."""

    def __init__(self, state: Path) -> None:
        self.port = free_port()
        self.state = state
        self.settings = KafkaSettings(bootstrap_servers=f"127.0.0.1:{self.port}")

    def start(self) -> None:
        start_broker(port=self.port, topics=[], state_dir=self.state)

    def stop(self) -> None:
        stop_broker(port=self.port, state_dir=self.state)

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture(scope="module")
def own(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnBroker]:
    broker = OwnBroker(tmp_path_factory.mktemp("own-broker"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def topic_names() -> dict[str, str]:
    suffix = uuid.uuid4().hex[:8]
    return {"tickets": f"sc-{suffix}.tickets", "chats": f"sc-{suffix}.chats", "surveys": f"sc-{suffix}.surveys"}


def create(own: OwnBroker, topics: dict[str, str], partitions: int) -> None:
    assert ensure_topics(own.settings, topics.values(), partitions) == {t: partitions for t in topics.values()}


def recreate(own: OwnBroker, topics: dict[str, str], partitions: int) -> None:
    """Deletes the topics and creates them again (Tansu supports DeleteTopics)."""
    delete(own, topics)
    create(own, topics, partitions)


def delete(own: OwnBroker, topics: dict[str, str]) -> None:
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(**own.settings.client_kwargs())
    try:
        admin.delete_topics(list(topics.values()))
        deadline = time.monotonic() + 10
        while any(t["error_code"] == 0 for t in admin.describe_topics(list(topics.values()))):
            assert time.monotonic() < deadline, "topics not deleted"
            time.sleep(0.05)
    finally:
        admin.close()


class Round:
    """Messages for one round: new events, re-sent events of earlier rounds, malformed records."""

    def __init__(self, tag: str, new: int, resend: list[dict] = (), malformed: int = 0) -> None:
        start = datetime(2026, 10, 1, tzinfo=timezone.utc)
        # customer ids cycle in a fixed order, so equal counts give equal per-partition offsets
        self.events = [{"event_id": f"{tag}-{i}", "event_type": "ticket.created", "customer_id": f"c{i % 11}",
                        "schema_version": 1, "occurred_at": (start + timedelta(minutes=i)).isoformat(),
                        "ticket_id": f"{tag}T{i}", "channel": "email"} for i in range(new)]
        self.resent = list(resend)
        self.malformed = malformed

    def messages(self) -> list[tuple[str, bytes, bytes]]:
        out = [("tickets", e["customer_id"].encode(), json.dumps(e).encode()) for e in self.events + self.resent]
        out += [("chats", f"m{i}".encode(), b"\xff not json") for i in range(self.malformed)]
        return out

    @property
    def size(self) -> int:
        return len(self.events) + len(self.resent) + self.malformed


def land(db: Path, own: OwnBroker, topics: dict[str, str]) -> dict[str, int]:
    """One `run --once` in-process; returns what the batches of this run consumed and counted."""
    before = table(db, "SELECT coalesce(max(batch_id), 0) FROM pipeline_batches")[0][0] if db.exists() else 0
    run_once(db, own.settings, topics, max_batch_events=100, poll_interval_s=0.1)
    consumed, landed, dups, dead = table(
        db, f"""SELECT coalesce(sum(consumed), 0), coalesce(sum(landed), 0), coalesce(sum(duplicates), 0),
                       coalesce(sum(dead_letters), 0) FROM pipeline_batches WHERE batch_id > {before}""")[0]
    assert consumed == landed + dups + dead
    return {"consumed": consumed, "landed": landed, "duplicates": dups, "dead": dead}


def log_ends(own: OwnBroker, topics: dict[str, str]) -> dict[tuple[str, int], int]:
    """True end offsets of the current log, read record by record (independent of the pipeline)."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(**own.settings.client_kwargs(), group_id=None, enable_auto_commit=False,
                             auto_offset_reset="earliest")
    try:
        from kafka import TopicPartition

        tps = [TopicPartition(t, p) for t in topics.values() for p in sorted(consumer.partitions_for_topic(t) or ())]
        consumer.assign(tps)
        consumer.seek_to_beginning()
        ends = {(tp.topic, tp.partition): 0 for tp in tps}
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < 3.0:  # a loaded machine can take seconds per fetch
            polled = consumer.poll(200)
            for tp, records in polled.items():
                ends[(tp.topic, tp.partition)] = records[-1].offset + 1
            if polled:
                quiet_since = time.monotonic()
        return ends
    finally:
        consumer.close()


def assert_current_log_read_whole(db: Path, own: OwnBroker, topics: dict[str, str], rnd: Round, got: dict[str, int],
                                  landed_before: set[str]) -> dict[tuple[str, int], int]:
    """Every record of the current log consumed exactly once in this run and accounted for.
    Returns the log's ends it checked (read once: a second reading on a loaded machine can stop
    before a slow partition answers)."""
    ends = log_ends(own, topics)
    assert sum(ends.values()) == rnd.size, f"seed {SEED}: the broker holds {ends}"
    expected_new = {e["event_id"] for e in rnd.events} - landed_before
    assert got == {"consumed": rnd.size, "landed": len(expected_new),
                   "duplicates": rnd.size - rnd.malformed - len(expected_new), "dead": rnd.malformed}, f"seed {SEED}"
    stored = dict(((t, p), o) for t, p, o in table(db, 'SELECT topic, "partition", next_offset FROM pipeline_offsets'))
    assert set(stored) <= set(ends) and {k: stored.get(k, 0) for k in ends} == ends, \
        f"seed {SEED}: stored offsets {stored} are not the log's ends {ends}"
    landed_ids = {r[0] for r in table(db, "SELECT event_id FROM events")}
    assert {e["event_id"] for e in rnd.events + rnd.resent} <= landed_ids
    return ends


def resets(db: Path) -> list[tuple]:
    return table(db, 'SELECT topic, "partition", kind, from_offset, to_offset, records FROM source_resets '
                     'ORDER BY topic, "partition", detected_at')


def status(db: Path, own: OwnBroker, topics: dict[str, str]) -> tuple[int, dict]:
    cmd = [sys.executable, "-m", "pipelines.cli", "status", "--json", "--db", str(db), "--bootstrap-servers",
           own.settings.bootstrap_servers, "--topic-tickets", topics["tickets"], "--topic-chats", topics["chats"],
           "--topic-surveys", topics["surveys"]]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.stdout.startswith("{"), result.stderr[-3000:]
    return result.returncode, json.loads(result.stdout)


@pytest.mark.parametrize("relation", ["fewer", "equal", "more"])
def test_broker_restart_while_stopped_then_fewer_equal_or_more_messages(own, tmp_path, caplog, relation):
    rng = random.Random(f"{SEED}-{relation}")
    db = tmp_path / "j.duckdb"
    topics = topic_names()
    create(own, topics, 3)
    first = Round("r1", rng.randint(60, 120))
    send(own.settings, topics, first.messages())
    got = land(db, own, topics)
    assert_current_log_read_whole(db, own, topics, first, got, set())
    stored_before = dict(((t, p), o) for t, p, o in table(db, 'SELECT topic, "partition", next_offset FROM pipeline_offsets'))

    own.restart()  # memory-only: every topic is gone
    create(own, topics, 3)
    n = {"fewer": rng.randint(5, len(first.events) - 20), "equal": len(first.events),
         "more": rng.randint(len(first.events) + 20, 3 * len(first.events))}[relation]
    second = Round("r2", n, resend=rng.sample(first.events, 7), malformed=3)
    send(own.settings, topics, second.messages())
    # before the pipeline runs again, status already sees the new log and counts all of it as lag
    code, report = status(db, own, topics)
    states = {(p["topic"], p["partition"]): p["state"] for p in report["partitions"]}
    assert code == 1 and report["total_lag"] == second.size, report
    assert {k: states[k] for k in stored_before} == {k: "recreated" for k in stored_before}, report
    caplog.set_level(logging.WARNING, logger="cxj")
    landed_before = {r[0] for r in table(db, "SELECT event_id FROM events")}
    got = land(db, own, topics)
    ends = assert_current_log_read_whole(db, own, topics, second, got, landed_before)

    # every partition landed from before was found changed, once, and re-read from 0
    assert resets(db) == [(t, p, "recreated", o, 0, r) for (t, p), o in sorted(stored_before.items())
                          for r in [min(o, ends[(t, p)])]], f"seed {SEED}"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    recreated = [w for w in warnings if "was recreated or truncated on the broker: re-reading it" in w]
    assert len(recreated) == len(stored_before), warnings
    code, report = status(db, own, topics)
    assert code == 1 and report["level_name"] == "WARN" and report["total_lag"] == 0, report
    assert sum("topic recreated on the broker" in r for r in report["reasons"]) == len(stored_before), report


def test_identical_content_resent_after_a_restart_is_still_a_different_log(own, tmp_path):
    """Same keys, same values, same counts: only the Kafka timestamps differ — enough to tell."""
    db = tmp_path / "j.duckdb"
    topics = topic_names()
    create(own, topics, 3)
    rnd = Round("same", 50)
    send(own.settings, topics, rnd.messages())
    assert land(db, own, topics)["landed"] == 50
    own.restart()
    create(own, topics, 3)
    send(own.settings, topics, rnd.messages())
    got = land(db, own, topics)
    assert got == {"consumed": 50, "landed": 0, "duplicates": 50, "dead": 0}  # re-read whole, not skipped
    assert {row[2] for row in resets(db)} == {"recreated"}


@pytest.mark.parametrize("before, after", [(3, 1), (2, 5)])
def test_topic_recreated_with_fewer_or_more_partitions(own, tmp_path, before, after):
    rng = random.Random(f"{SEED}-{before}-{after}")
    db = tmp_path / "j.duckdb"
    topics = topic_names()
    create(own, topics, before)
    first = Round("p1", rng.randint(60, 100))
    send(own.settings, topics, first.messages())
    land(db, own, topics)
    stored_before = dict(((t, p), o) for t, p, o in table(db, 'SELECT topic, "partition", next_offset FROM pipeline_offsets'))

    recreate(own, topics, after)
    if after < before:  # before the pipeline notices, status already refuses to call them healthy
        code, report = status(db, own, topics)
        gone = {(p["topic"], p["partition"]) for p in report["partitions"] if p["state"] == "gone"}
        assert code == 1 and gone == {k for k in stored_before if k[1] >= after}, report
        assert all(f"{t}[{p}]" in " ".join(report["reasons"]) for t, p in gone)
    second = Round("p2", rng.randint(30, 150), malformed=2)
    send(own.settings, topics, second.messages())
    got = land(db, own, topics)
    ends = assert_current_log_read_whole(db, own, topics, second, got, set())
    expected = []
    for (t, p), o in sorted(stored_before.items()):
        if p < after:
            expected.append((t, p, "recreated", o, 0, min(o, ends[(t, p)])))
        else:
            expected.append((t, p, "partition_removed", o, None, None))  # the old log is gone: count unknown
    assert resets(db) == expected, f"seed {SEED}"
    code, report = status(db, own, topics)
    assert code == 1, report
    assert not any(p["state"] == "gone" for p in report["partitions"])  # dropped from the offsets
    for t, p, _kind, *_ in expected:
        assert any(r.startswith(f"{t}[{p}]: ") for r in report["reasons"]), report


def test_topics_missing_for_a_while_then_back_with_new_data(own, tmp_path, caplog):
    """Topics deleted while landed from: the run warns, skips nothing and status names every
    landed partition as gone; when they come back with new data, all of it is read."""
    db = tmp_path / "j.duckdb"
    topics = topic_names()
    create(own, topics, 3)
    first = Round("m1", 70)
    send(own.settings, topics, first.messages())
    land(db, own, topics)
    stored_before = dict(((t, p), o) for t, p, o in table(db, 'SELECT topic, "partition", next_offset FROM pipeline_offsets'))
    delete(own, topics)
    caplog.set_level(logging.WARNING, logger="cxj")
    assert land(db, own, topics)["consumed"] == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sorted(w for w in warnings if "does not exist" in w) == sorted(
        f"topic {t!r} does not exist on {own.settings.bootstrap_servers} (yet)" for t in topics.values()), warnings
    code, report = status(db, own, topics)
    gone = {(p["topic"], p["partition"]) for p in report["partitions"] if p["state"] == "gone"}
    assert code == 1 and gone == set(stored_before), report
    assert resets(db) == []  # nothing decided while the topics are away

    create(own, topics, 3)
    second = Round("m2", 45)
    send(own.settings, topics, second.messages())
    got = land(db, own, topics)
    assert_current_log_read_whole(db, own, topics, second, got, set())
    assert {r[2] for r in resets(db)} == {"recreated"} and len(resets(db)) == len(stored_before)


def test_broker_restart_during_follow(own, tmp_path):
    """A running `cxj run --follow`: the broker restarts, the topics come back, more messages than
    before arrive; the new log is read whole, nothing twice, nothing skipped."""
    from tests.test_broker_faults import Logged, wait_until

    rng = random.Random(f"{SEED}-follow")
    db = tmp_path / "j.duckdb"
    topics = topic_names()
    create(own, topics, 3)
    cmd = [sys.executable, "-m", "pipelines.cli", "run", "--follow", "--db", str(db), "--bootstrap-servers",
           own.settings.bootstrap_servers, "--topic-tickets", topics["tickets"], "--topic-chats", topics["chats"],
           "--topic-surveys", topics["surveys"], "--poll-interval", "0.2s", "--broker-timeout", "2s"]
    run = Logged(cmd)
    first, second = Round("f1", rng.randint(40, 80)), None
    try:
        send(own.settings, topics, first.messages())
        assert wait_until(lambda: landed_count(db) == len(first.events), 90), "".join(run.lines)[-3000:]
        mark = len(run.lines)
        own.stop()
        assert run.wait_for(r"broker unavailable", 60, after=mark), "".join(run.lines[mark:])
        own.start()
        create(own, topics, 3)
        second = Round("f2", rng.randint(len(first.events) + 10, 3 * len(first.events)))
        send(own.settings, topics, second.messages())
        total = len(first.events) + len(second.events)
        assert wait_until(lambda: landed_count(db) == total, 120), f"seed {SEED}: landed {landed_count(db)} of {total}"
    finally:
        log = run.finish()
    assert run.proc.returncode == 0, log[-3000:]
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]
    consumed, dups, dead = table(db, "SELECT sum(consumed), sum(duplicates), sum(dead_letters) FROM pipeline_batches")[0]
    assert (consumed, dups, dead) == (total, 0, 0), f"seed {SEED}: every record of both logs read exactly once"
    assert {r[2] for r in resets(db)} == {"recreated"} and resets(db), log[-3000:]
    ends = log_ends(own, topics)
    offsets = table(db, """SELECT source_topic, source_partition, count(*), max(source_offset) + 1 FROM events
                            WHERE event_id LIKE 'f2-%' GROUP BY ALL""")
    assert {(t, p): (n, m) for t, p, n, m in offsets} == {k: (e, e) for k, e in ends.items() if e > 0}


def landed_count(db: Path) -> int:
    from tests.test_broker_faults import landed

    return landed(db)


def test_records_lost_to_retention_are_stored_and_make_status_warn(own, tmp_path):
    """The broker here cannot delete records (see the module docstring): the decision is unit-tested;
    this checks that such a change is stored with its count and that `cxj status` is not OK."""
    db = tmp_path / "j.duckdb"
    topics = topic_names()
    create(own, topics, 1)
    send(own.settings, topics, Round("k", 20).messages())
    land(db, own, topics)
    assert status(db, own, topics)[0] == 0
    change = SourceChange(topics["tickets"], 0, RETENTION, 20, 57, 37, "its earliest offset 57 is past the next offset to land 20")
    with Store(db) as store:
        store.record_source_changes([change], store.next_batch_id())
    with Store(db):  # as the pipeline's next start does: the replica (which status reads) catches up
        pass
    assert resets(db) == [(topics["tickets"], 0, "retention", 20, 57, 37)]
    assert table(db, "SELECT next_offset FROM pipeline_offsets") == [(57,)]
    code, report = status(db, own, topics)
    assert code == 1 and any("37 records lost to retention (offsets 20..56)" in r for r in report["reasons"]), report
