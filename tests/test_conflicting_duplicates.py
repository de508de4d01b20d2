"""Conflicting copies of an event: the smallest content hash wins, however the stream is cut.

The same messages — events, exact re-deliveries and generated conflicting copies (another
time, status, outcome, score or customer; on other partitions, before or after the original) —
go through the real pipeline with different batch sizes, in rounds with restarts in between,
and in different arrival orders. Every way gives identical tables, and those tables follow the
documented rule, worked out here independently of the implementation: per event_id the copy
with the smallest SHA-256 of its canonical JSON is in `events`, and every delivery whose
content differs from it is in `event_conflicts`.
"""
from __future__ import annotations

import hashlib
import json
import random
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from pipelines.kafka.simulator import generate_customer_events
from tests.support import JOURNEY_COLUMNS, new_topics, run_once, send, table

Message = tuple[str, bytes, bytes]
STREAM = {"ticket": "tickets", "chat": "chats", "survey": "surveys"}


def content_hash(doc: dict[str, Any]) -> str:
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(canonical).hexdigest()


def message(doc: dict[str, Any], key: bytes) -> Message:
    return (STREAM[doc["event_type"].split(".")[0]], key, json.dumps(doc).encode())


def conflicting_copy(doc: dict[str, Any], rng: random.Random, customers: list[str]) -> dict[str, Any]:
    copy = dict(doc)
    change = rng.choice(["time", "field", "customer", "note"])
    if change == "time":
        at = datetime.fromisoformat(doc["occurred_at"].replace("Z", "+00:00")) + timedelta(minutes=rng.choice([-90, -1, 1, 600]))
        copy["occurred_at"] = at.isoformat().replace("+00:00", "Z")
    elif change == "field" and doc["event_type"] == "ticket.status_changed":
        copy["status"] = rng.choice(["solved", "open", "closed", "pending"])
    elif change == "field" and doc["event_type"] == "survey.responded":
        copy["csat"] = rng.choice([1, 3, 5])
    elif change == "customer":
        copy["customer_id"] = rng.choice([c for c in customers if c != doc["customer_id"]])
    copy["note"] = f"copy {rng.randrange(10**6)}"  # differs even when the change above did not apply
    return copy


def stream(seed: int) -> list[Message]:
    """Events of a few customers, exact re-deliveries and conflicting copies, in arrival order."""
    rng = random.Random(seed)
    events = generate_customer_events(5, seed, datetime(2026, 8, 1, tzinfo=timezone.utc))
    customers = sorted({e["customer_id"] for e in events})
    messages = [message(e, e["customer_id"].encode()) for e in events]
    for original in rng.sample(range(len(messages)), 6):  # exact duplicates, later
        messages.insert(rng.randint(original + 1, len(messages)), messages[original])
    for doc in rng.sample(events, 8):  # conflicting copies anywhere, keyed to any partition
        for _ in range(rng.randint(1, 2)):
            copy = conflicting_copy(doc, rng, customers)
            messages.insert(rng.randint(0, len(messages)), message(copy, f"k{rng.randrange(100)}".encode()))
    return messages


def replacing_pair() -> tuple[Message, Message, dict[str, Any], dict[str, Any]]:
    """An event of customer A and a copy for customer B whose content hash is smaller: the
    copy, sent in a later round, must replace the landed row and move the event to B."""
    loser = {"event_id": "pair-1", "event_type": "ticket.created", "occurred_at": "2026-08-01T10:00:00Z",
             "customer_id": "pair-A", "schema_version": 1, "ticket_id": "PT-1", "channel": "email"}
    n = 0
    while True:
        winner = dict(loser, customer_id="pair-B", note=f"copy {n}")
        if content_hash(winner) < content_hash(loser):
            return message(loser, b"pair-A"), message(winner, b"pair-B"), loser, winner
        n += 1


COMPARED = {
    "events": "SELECT * EXCLUDE (batch_id, landed_at) FROM events ORDER BY event_id",
    "journeys": f"SELECT {JOURNEY_COLUMNS} FROM journeys ORDER BY journey_id",
    "journey_events": "SELECT * EXCLUDE (batch_id) FROM journey_events ORDER BY event_id",
    "event_conflicts": "SELECT * EXCLUDE (batch_id, detected_at) FROM event_conflicts ORDER BY ALL",
    "duplicate_deliveries": "SELECT * EXCLUDE (batch_id) FROM duplicate_deliveries ORDER BY ALL",
    "dead_letters": "SELECT count(*) FROM dead_letters",
}
# Across arrival orders the Kafka coordinates differ; the content must not.
CONTENT = {
    "events": """SELECT * EXCLUDE (batch_id, landed_at, source_topic, source_partition, source_offset, kafka_timestamp)
                 FROM events ORDER BY event_id""",
    "journeys": COMPARED["journeys"],
    "journey_events": COMPARED["journey_events"],
    "event_conflicts": "SELECT event_id, winner_hash, loser_hash, payload FROM event_conflicts ORDER BY ALL",
}


def tables(db: Path, queries: dict[str, str]) -> dict[str, list]:
    return {name: table(db, query) for name, query in queries.items()}


def balanced(db: Path, sent: int) -> None:
    assert table(db, "SELECT count(*) FROM pipeline_batches WHERE consumed <> landed + duplicates + dead_letters") == [(0,)]
    assert table(db, "SELECT sum(consumed), sum(landed) FROM pipeline_batches") == [
        (sent, table(db, "SELECT count(*) FROM events")[0][0])]
    assert table(db, "SELECT sum(duplicates) FROM pipeline_batches")[0][0] == table(
        db, "SELECT (SELECT count(*) FROM event_conflicts) + (SELECT count(*) FROM duplicate_deliveries)")[0][0]


def follows_the_rule(db: Path, messages: list[Message]) -> None:
    """events holds the smallest-hash copy of every event_id; event_conflicts every other content."""
    hashes: dict[str, list[str]] = {}
    for _, _, value in messages:
        doc = json.loads(value)
        hashes.setdefault(doc["event_id"], []).append(content_hash(doc))
    landed = {event_id: content_hash(json.loads(payload)) for event_id, payload in table(db, "SELECT event_id, payload FROM events")}
    assert landed == {event_id: min(h) for event_id, h in hashes.items()}
    losers = sorted((event_id, min(h), loser) for event_id, h in hashes.items() for loser in h if loser != min(h))
    assert table(db, "SELECT event_id, winner_hash, loser_hash FROM event_conflicts ORDER BY ALL") == losers
    assert len({event_id for event_id, _, _ in losers}) >= 8


@pytest.fixture(scope="module")
def messages() -> list[Message]:
    return stream(11)


@pytest.fixture(scope="module")
def one_batch(broker, messages, tmp_path_factory):
    """The messages on their own topics, landed in one batch."""
    import os

    os.environ["CXJ_REPLICA"] = "off"  # the read replica is not under test here
    topics = new_topics(broker)
    send(broker, topics, messages)
    db = tmp_path_factory.mktemp("conflicts") / "one-batch.duckdb"
    run_once(db, broker, topics)
    yield topics, db
    os.environ.pop("CXJ_REPLICA", None)


def test_batch_sizes_give_identical_tables(broker, messages, one_batch, tmp_path):
    topics, one = one_batch
    follows_the_rule(one, messages)
    balanced(one, len(messages))
    reference = tables(one, COMPARED)
    for size in (7, 20):
        db = tmp_path / f"batches-of-{size}.duckdb"
        run_once(db, broker, topics, max_batch_events=size)
        assert table(db, "SELECT count(*) FROM pipeline_batches")[0][0] >= len(messages) // size
        assert tables(db, COMPARED) == reference, f"--max-batch-events {size}"
        balanced(db, len(messages))


@pytest.mark.parametrize("order", ["original", "reversed", "shuffled"])
def test_restarts_and_arrival_order_give_identical_content(broker, messages, one_batch, tmp_path, order):
    """Sent in three rounds, each landed by a new runner (a restart) before the next arrives."""
    _, expected = one_batch
    reordered = {"original": messages, "reversed": messages[::-1],
                 "shuffled": random.Random(5).sample(messages, len(messages))}[order]
    topics = new_topics(broker)
    db = tmp_path / f"{order}.duckdb"
    cuts = [0, len(reordered) // 3, 2 * len(reordered) // 3, len(reordered)]
    for start, stop in zip(cuts, cuts[1:]):
        send(broker, topics, reordered[start:stop])
        run_once(db, broker, topics, max_batch_events=17)
    follows_the_rule(db, reordered)
    balanced(db, len(reordered))
    assert tables(db, CONTENT) == tables(expected, CONTENT)


def test_a_later_winner_replaces_the_landed_row_and_moves_the_event(broker, tmp_path, monkeypatch):
    monkeypatch.delenv("CXJ_REPLICA", raising=False)  # the read replica must follow the replacement too
    loser_msg, winner_msg, loser, winner = replacing_pair()
    topics = new_topics(broker)
    send(broker, topics, [loser_msg])
    db = tmp_path / "journeys.duckdb"
    run_once(db, broker, topics)
    assert table(db, "SELECT customer_id FROM journey_events WHERE event_id = 'pair-1'") == [("pair-A",)]
    send(broker, topics, [winner_msg, loser_msg])  # the winner, and the loser re-delivered once more
    batches = run_once(db, broker, topics)
    assert [(b.consumed, b.landed, b.duplicates, b.dead_letters) for b in batches] == [(2, 0, 2, 0)]
    assert table(db, "SELECT customer_id, payload::VARCHAR FROM events") == [("pair-B", winner_msg[2].decode())]
    # both customers' journeys were recomputed in that batch: A has none left, B has the event
    assert table(db, "SELECT customer_id FROM journeys ORDER BY 1") == [("pair-B",)]
    assert table(db, "SELECT customer_id FROM journey_events WHERE event_id = 'pair-1'") == [("pair-B",)]
    # both deliveries of the loser are conflicts, with the winner's hash; nothing else
    assert table(db, "SELECT winner_hash, loser_hash, payload FROM event_conflicts ORDER BY \"offset\"") == [
        (content_hash(winner), content_hash(loser), loser_msg[2].decode())] * 2
    assert table(db, "SELECT count(*) FROM duplicate_deliveries") == [(0,)]
    assert table(db, "SELECT sum(landed), count(*) FROM pipeline_batches") == [(1, 2)]
    assert table(db, "SELECT event_id, old_customer_id, batch_id FROM event_replacements") == [("pair-1", "pair-A", 2)]
    from pipelines.storage.reader import connect_replica

    replica = connect_replica(db)
    try:
        assert replica.execute("SELECT customer_id FROM events WHERE event_id = 'pair-1'").fetchall() == [("pair-B",)]
        assert replica.execute("SELECT customer_id FROM journeys").fetchall() == [("pair-B",)]
    finally:
        replica.close()


def test_the_winner_does_not_depend_on_the_order_of_copies():
    """The pure rule (transforms.dedup) over every permutation of a few copies."""
    from itertools import permutations

    from transforms.dedup import content_hash as implementation_hash
    from transforms.dedup import winning_copies

    docs = [{"event_id": "e", "status": s} for s in ("solved", "open", "closed")]
    rows = [{"event_id": "e", "content_hash": content_hash(d), "topic": "t", "partition": p, "offset": o}
            for d, p, o in zip(docs + docs[:1], (2, 0, 1, 0), (5, 9, 3, 1))]
    assert [implementation_hash(d) for d in docs] == [content_hash(d) for d in docs]
    # the smallest hash, and among equal contents (docs[0] twice) the smallest coordinates
    expected = min(rows, key=lambda r: (r["content_hash"], r["topic"], r["partition"], r["offset"]))
    for order in permutations(rows):
        winners, losers = winning_copies(order)
        assert winners == [expected]
        assert sorted(map(id, losers)) == sorted(id(r) for r in rows if r is not expected)
