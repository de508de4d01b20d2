"""`cxj simulate --live` and `--start now` against the real broker and pipeline: journeys unfold at
wall-clock time, nothing is stamped in the future, every message is accounted for."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections import defaultdict
from datetime import datetime

from tests.support import run_once, table

CXJ = [sys.executable, "-m", "pipelines.cli"]


def simulate(broker, topics, *args: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXJ_")}
    result = subprocess.run([*CXJ, "simulate", "--log-format", "json", "--bootstrap-servers", broker.bootstrap_servers,
                             "--topic-tickets", topics["tickets"], "--topic-chats", topics["chats"],
                             "--topic-surveys", topics["surveys"], *args], capture_output=True, text=True, timeout=180, env=env)
    logs = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    return result, logs


def sent_count(logs: list[dict]) -> int:
    """How many messages the simulator says it sent (its closing log line)."""
    sent = [int(m.group(1)) for log in logs if (m := re.match(r"sent (\d+) messages", log["message"]))]
    assert sent, "the simulator logged no 'sent N messages' line"
    return sent[-1]


def consume_all(broker, topics, expected: int) -> list:
    """All ``expected`` records of the topics, or an AssertionError naming how many arrived.

    The count comes from the simulator, not from the broker's end offsets: the local broker reports
    a partition's end as the base offset of its last record batch (docs/reliability.md)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(**broker.client_kwargs(), enable_auto_commit=False, group_id=None)
    parts = [TopicPartition(t, p) for t in topics.values() for p in consumer.partitions_for_topic(t)]
    consumer.assign(parts)
    consumer.seek_to_beginning()
    records = []
    deadline = time.monotonic() + 180  # generous: on a loaded CI machine fetches can stall for seconds
    while len(records) < expected and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=500).values():
            records.extend(batch)
    for batch in consumer.poll(timeout_ms=1000).values():  # anything beyond the count is a defect too
        records.extend(batch)
    consumer.close()
    assert len(records) == expected, f"read {len(records)} records; the simulator sent {expected}"
    return records


def parse_time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_live_journeys_unfold_at_wall_clock_time(broker, topics, db):
    started = time.time()
    result, logs = simulate(broker, topics, "--live", "--rate", "15", "--speed", "3600", "--duration", "8s", "--seed", "5")
    assert result.returncode == 0, result.stderr
    final = logs[-1]
    assert final["message"].startswith("live: stopped after")
    assert final["messages"] == final["events"] + final["duplicates"] + final["malformed"]
    assert final["duplicates"] == final["malformed"] == 0
    records = consume_all(broker, topics, final["messages"])
    events = [json.loads(r.value) for r in records]
    # Poisson arrivals at 15/s for 8 s: 120 expected, 4 sigma either side
    customers = {e["customer_id"] for e in events}
    assert len(customers) == final["customers"]
    assert 120 - 4 * 11 <= len(customers) <= 120 + 4 * 11, len(customers)
    for record, event in zip(records, events):
        occurred = parse_time(event["occurred_at"])
        assert started - 1 <= occurred <= record.timestamp / 1000 + 0.002, (event, record.timestamp)  # never in the future
    # realistic journeys: several events per customer, each thread begins with its start event
    per_customer = defaultdict(int)
    first_of_thread: dict[str, str] = {}
    for record in sorted(records, key=lambda r: (r.topic, r.partition, r.offset)):
        event = json.loads(record.value)
        per_customer[event["customer_id"]] += 1
        kind = event["event_type"].split(".")[0]
        if kind in ("ticket", "chat"):
            first_of_thread.setdefault(event[f"{kind}_id"], event["event_type"])
    assert sum(per_customer.values()) / len(per_customer) >= 3
    assert set(first_of_thread.values()) <= {"ticket.created", "chat.started"}, set(first_of_thread.values())
    # and the pipeline lands all of it: no dead letters, no event lost
    run_once(db, broker, topics)
    assert table(db, "SELECT count(*) FROM dead_letters") == [(0,)]
    assert table(db, "SELECT count(*) FROM events") == [(final["events"],)]
    assert table(db, "SELECT count(DISTINCT customer_id) FROM journeys") == [(len(customers),)]


def test_live_mess_is_accounted_for_exactly(broker, topics, db):
    result, logs = simulate(broker, topics, "--live", "--rate", "10", "--speed", "86400", "--duration", "8s",
                            "--duplicates", "0.2", "--malformed", "0.1", "--out-of-order", "0.2")
    assert result.returncode == 0, result.stderr
    final = logs[-1]
    assert final["duplicates"] > 0 and final["malformed"] > 0 and final["late"] > 0
    run_once(db, broker, topics)
    consumed, landed, duplicates, dead = table(
        db, "SELECT sum(consumed), sum(landed), sum(duplicates), sum(dead_letters) FROM pipeline_batches")[0]
    assert consumed == final["messages"]
    assert (landed, duplicates, dead) == (final["events"], final["duplicates"], final["malformed"])


def test_start_now_puts_nothing_in_the_future(broker, topics, db):
    """`--start now` used to dead-letter 96 % (future timestamps); now it is history ending now."""
    before = time.time()
    result, logs = simulate(broker, topics, "--customers", "150", "--start", "now", "--seed", "9")
    assert result.returncode == 0, result.stderr
    events = [json.loads(r.value) for r in consume_all(broker, topics, sent_count(logs))]
    assert len(events) > 150
    assert max(parse_time(e["occurred_at"]) for e in events) <= time.time()
    assert min(parse_time(e["occurred_at"]) for e in events) >= before - 22 * 86400
    run_once(db, broker, topics)
    assert table(db, "SELECT count(*) FROM dead_letters") == [(0,)]
    assert table(db, "SELECT count(*) FROM events") == [(len(events),)]


def test_live_refuses_options_that_do_not_apply(broker, topics):
    result, _ = simulate(broker, topics, "--live", "--customers", "5")
    assert result.returncode == 2 and "--customers and --start do not apply" in result.stderr
    result, _ = simulate(broker, topics, "--duration", "5s")
    assert result.returncode == 2 and "apply to --live only" in result.stderr
