"""The simulator: deterministic, contract-valid, with the scenario mix and the mess asked for."""
from __future__ import annotations

import json
import time
from collections import Counter
from datetime import datetime, timezone

from pipelines.kafka.simulator import MALFORMED_KINDS, generate_customer_events, to_messages
from transforms.parse import SourceRef, parse_record

START = datetime(2026, 8, 1, tzinfo=timezone.utc)
NOW_US = int(datetime(2027, 1, 1, tzinfo=timezone.utc).timestamp() * 1_000_000)
STREAM = {"ticket": "tickets", "chat": "chats", "survey": "surveys"}


def test_same_seed_same_bytes_other_seed_other_events():
    a = to_messages(generate_customer_events(50, 7, START), 7, 0.1, 0.1, 0.1)
    b = to_messages(generate_customer_events(50, 7, START), 7, 0.1, 0.1, 0.1)
    c = to_messages(generate_customer_events(50, 8, START), 8, 0.1, 0.1, 0.1)
    assert a == b
    assert a != c


def test_clean_events_are_valid_contract_events_with_unique_ids():
    events = generate_customer_events(200, 1, START)
    ids = [e["event_id"] for e in events]
    assert len(ids) == len(set(ids))
    for e in events:
        kind, row = parse_record(json.dumps(e).encode(), SourceRef("t", 0, 0), STREAM[e["event_type"].split(".")[0]], NOW_US)
        assert kind == "event", (row, e)


def test_scenario_mix_covers_the_journeys_support_desks_see():
    events = generate_customer_events(200, 2, START)
    types = Counter(e["event_type"] for e in events)
    assert all(types[t] for t in ("ticket.created", "chat.started", "survey.responded", "chat.ended"))
    outcomes = Counter(e["outcome"] for e in events if e["event_type"] == "chat.ended")
    assert outcomes["escalated"] and outcomes["abandoned"] and outcomes["resolved"]
    assert any(e.get("ticket_id") for e in events if e["event_type"] == "chat.ended")
    statuses = [(e["ticket_id"], e["status"]) for e in events if e["event_type"] == "ticket.status_changed"]
    reopened = {t for t, s in statuses if s == "open"}
    assert reopened, "no reopen"
    assignments: dict[str, list] = {}
    for e in events:
        if e["event_type"].endswith(".assigned"):
            assignments.setdefault(e.get("ticket_id") or e.get("chat_id"), []).append(e)
    chains = [[a.get("agent_id") for a in chain] for chain in assignments.values()]
    assert any(len(c) >= 3 and c[0] == c[2] and c[0] != c[1] and c[0] for c in chains), "no A -> B -> A"
    assert any(c[0] is None for c in chains), "no team-only assignment"
    assert any(chain[0]["handler_type"] == "bot" and any(a["handler_type"] == "agent" for a in chain)
               for chain in assignments.values()), "no bot -> agent"
    offsets = Counter(e["occurred_at"][-6:] for e in events if not e["occurred_at"].endswith("Z"))
    assert offsets, "every timestamp in UTC: offsets are never exercised"


def test_mess_fractions():
    events = generate_customer_events(300, 3, START)
    clean = to_messages(events, 3)
    messy = to_messages(events, 3, out_of_order=0.05, duplicates=0.02, malformed=0.01)
    assert len(clean) == len(events)
    values = Counter(v for _, _, v in messy)
    assert sum(n - 1 for n in values.values() if n > 1) == int(len(events) * 0.02)
    assert len(messy) == len(events) + int(len(events) * 0.02) + int(len(events) * 0.01)
    malformed = [
        v for s, _, v in messy
        if parse_record(v, SourceRef("t", 0, 0), s, NOW_US)[0] == "dead"
    ]
    assert len(malformed) == int(len(events) * 0.01) >= len(MALFORMED_KINDS)
    clean_order = [v for _, _, v in clean]
    messy_clean = [v for _, _, v in messy if v in set(clean_order)]
    deduped = list(dict.fromkeys(messy_clean))
    assert deduped != clean_order  # some arrived late
    assert sorted(deduped) == sorted(clean_order)


def test_rate_is_respected_measured_from_kafka_record_timestamps(broker, topics):
    """`cxj simulate --rate R` (README): the producer's record timestamps (CreateTime, stamped when
    each message is handed to the client) span (N - 1) / R seconds within 10 %, and every quarter
    of the run keeps the pace within 25 % (no burst-then-wait)."""
    import os
    import subprocess
    import sys

    from kafka import KafkaConsumer, TopicPartition

    rate = 40.0
    cmd = [sys.executable, "-m", "pipelines.cli", "simulate", "--customers", "12", "--seed", "5", "--rate", str(rate),
           "--bootstrap-servers", broker.bootstrap_servers, "--topic-tickets", topics["tickets"],
           "--topic-chats", topics["chats"], "--topic-surveys", topics["surveys"]]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert result.returncode == 0, result.stderr[-2000:]
    expected = len(to_messages(generate_customer_events(12, 5, START), 5, 0.0, 0.0, 0.0))
    assert f"sent {expected} messages" in result.stderr

    consumer = KafkaConsumer(**broker.client_kwargs(), enable_auto_commit=False, group_id=None)
    tps = [TopicPartition(t, p) for t in topics.values() for p in consumer.partitions_for_topic(t) or ()]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    stamps: list[int] = []
    deadline = time.monotonic() + 60
    while len(stamps) < expected and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            stamps += [r.timestamp for r in records]
    consumer.close()
    assert len(stamps) == expected
    stamps.sort()
    span_s = (stamps[-1] - stamps[0]) / 1000
    achieved = (expected - 1) / span_s
    print(f"{expected} messages over {span_s:.2f}s: {achieved:.1f}/s for --rate {rate:.0f}")
    assert abs(achieved - rate) <= 0.10 * rate, achieved
    quarter = expected // 4
    for q in range(4):
        part = stamps[q * quarter:(q + 1) * quarter]
        part_rate = (len(part) - 1) / max((part[-1] - part[0]) / 1000, 1e-3)
        assert abs(part_rate - rate) <= 0.25 * rate, (q, part_rate)
