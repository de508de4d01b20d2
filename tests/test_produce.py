"""`cxj produce --from FILE` (backfill) against the real local broker."""
from __future__ import annotations

import argparse
import gzip
import json
import time
import uuid
from typing import Any

import pytest

from pipelines.cli import produce as cmd_produce
from pipelines.kafka.file_to_topic import backfill
from tests.support import run_once, table
from tests.test_golden import SCENARIOS, check, db_rows


def parse_args(broker, topics: dict[str, str], *argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cmd_produce.add_arguments(parser)
    return parser.parse_args([
        *argv, "--no-progress", "--bootstrap-servers", broker.bootstrap_servers,
        "--topic-tickets", topics["tickets"], "--topic-chats", topics["chats"], "--topic-surveys", topics["surveys"],
    ])


def consume_all(broker, topic: str, expected: int, timeout_s: float = 10.0) -> list[tuple[bytes, bytes]]:
    """Every record of a topic (waits until ``expected`` arrived or the timeout)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(**broker.client_kwargs(), enable_auto_commit=False, group_id=None)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        records: list[tuple[bytes, bytes]] = []
        deadline = time.monotonic() + timeout_s
        while len(records) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend((r.key, r.value) for r in batch)
        if expected == 0:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend((r.key, r.value) for r in batch)
        return records
    finally:
        consumer.close()


def ev(event_id: str, event_type: str, **fields: Any) -> dict[str, Any]:
    doc = {"event_id": event_id, "event_type": event_type, "occurred_at": "2026-03-02T09:00:00+01:00",
           "customer_id": "p-c1", "schema_version": 1, "x_unknown_field": {"kept": True}}
    doc.update(fields)
    return doc


GOOD = [
    ev("p1", "ticket.created", ticket_id="T1", channel="email"),
    ev("p2", "chat.started", chat_id="C1", channel="chat", customer_id="p-c2"),
    ev("p3", "survey.responded", survey_id="S1", ticket_id="T1", csat=5),
    ev("p4", "ticket.status_changed", ticket_id="T1", status="solved", occurred_at="2026-03-02T10:00:00+01:00"),
]


def test_routes_by_event_type_and_reports_bad_lines(broker, topics, tmp_path, caplog, capsys):
    lines = [
        json.dumps(GOOD[0]),                       # 1
        "{not json",                               # 2
        json.dumps(GOOD[1]),                       # 3
        "",                                        # 4 blank: skipped, not an error
        json.dumps([1, 2]),                        # 5
        json.dumps(ev("p9", "ticket.deleted", ticket_id="T1")),  # 6
        json.dumps(GOOD[2]),                       # 7
        json.dumps(ev("p8", "ticket.created", ticket_id="T1")),  # 8 channel missing
        json.dumps(ev("p7", "ticket.created", ticket_id="T1", channel="email", occurred_at="2026-03-02 09:00")),  # 9
        json.dumps(GOOD[3]),                       # 10
    ]
    export = tmp_path / "export.jsonl"
    export.write_bytes(("\n".join(lines) + "\n").encode() + b"\xff\xfe not utf-8\n")  # 11
    rejects = tmp_path / "rejects.jsonl"

    code = cmd_produce.main(parse_args(broker, topics, "--from", str(export), "--rejects", str(rejects)), [])

    assert code == cmd_produce.EXIT_REJECTED == 1
    reported = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert [(r["line"], r["reason"]) for r in reported] == [
        (2, "not_json"), (5, "not_object"), (6, "unknown_event_type"), (8, "invalid:schema_violation"),
        (9, "invalid:bad_timestamp"), (11, "not_utf8"),
    ]
    stderr = capsys.readouterr().err
    assert "line 2: not_json" in stderr and "line 6: unknown_event_type: event_type 'ticket.deleted'" in stderr
    tickets = consume_all(broker, topics["tickets"], 2)
    chats = consume_all(broker, topics["chats"], 1)
    surveys = consume_all(broker, topics["surveys"], 1)
    # byte for byte as exported, keyed by customer_id, on the topic of the event type
    assert sorted(tickets) == sorted([(b"p-c1", lines[0].encode()), (b"p-c1", lines[9].encode())])
    assert chats == [(b"p-c2", lines[2].encode())]
    assert surveys == [(b"p-c1", lines[6].encode())]


def test_gzipped_export_replays_history_into_journeys(broker, topics, tmp_path):
    """A backfill of golden scenarios (whatever the file name, gzip is detected) lands the
    hand-derived journeys: the way users replay history."""
    chosen = [s for s in SCENARIOS if not s.checkpoints][:12]
    export = tmp_path / "history.export"  # no .gz suffix on purpose
    with gzip.open(export, "wt", encoding="utf-8") as out:
        for s in chosen:
            for line in s.lines:
                doc = json.loads(line)
                doc["customer_id"] = f"{s.name}/{doc['customer_id']}"
                doc["event_id"] = f"{s.name}/{doc['event_id']}"
                out.write(json.dumps(doc) + "\n")

    report = backfill(export, broker, topics, progress=False)
    assert report.rejected == [] and report.sent == report.lines == sum(len(s.lines) for s in chosen)

    db = tmp_path / "journeys.duckdb"
    run_once(db, broker, topics)
    for s in chosen:
        check(db_rows(db, f"{s.name}/"), s.journeys, f"{s.name} via produce", None, f"{s.name}/", f"{s.name}/")
    # replaying the same export again is safe: everything is a duplicate
    again = backfill(export, broker, topics, progress=False)
    assert again.sent == report.sent
    before = table(db, "SELECT count(*) FROM events")
    run_once(db, broker, topics)
    assert table(db, "SELECT count(*) FROM events") == before
    assert table(db, "SELECT sum(duplicates) FROM pipeline_batches") == [(report.sent,)]


def test_no_validate_sends_invalid_events_to_the_dead_letter_table(broker, topics, tmp_path):
    export = tmp_path / "export.jsonl"
    export.write_text("\n".join([json.dumps(GOOD[0]), json.dumps(ev("p8", "ticket.created", ticket_id="T1")), "nope"]) + "\n")
    code = cmd_produce.main(parse_args(broker, topics, "--from", str(export), "--no-validate"), [])
    assert code == 1  # "nope" has no event_type, so it cannot be routed
    db = tmp_path / "journeys.duckdb"
    run_once(db, broker, topics)
    assert table(db, "SELECT count(*) FROM events") == [(1,)]
    assert table(db, "SELECT reason FROM dead_letters") == [("schema_violation",)]


def test_all_good_exits_zero_and_dry_run_sends_nothing(broker, topics, tmp_path):
    export = tmp_path / "export.jsonl.gz"
    with gzip.open(export, "wt") as out:
        out.write("".join(json.dumps(e) + "\n" for e in GOOD))
    assert cmd_produce.main(parse_args(broker, topics, "--from", str(export), "--dry-run"), []) == 0
    assert consume_all(broker, topics["tickets"], 0) == []
    assert cmd_produce.main(parse_args(broker, topics, "--from", str(export)), []) == 0
    assert len(consume_all(broker, topics["tickets"], 2)) == 2


def test_missing_topics_fail_unless_created(broker, tmp_path):
    suffix = uuid.uuid4().hex[:8]
    topics = {k: f"p-{suffix}.{k}" for k in ("tickets", "chats", "surveys")}
    export = tmp_path / "export.jsonl"
    export.write_text(json.dumps(GOOD[0]) + "\n")
    assert cmd_produce.main(parse_args(broker, topics, "--from", str(export)), []) == cmd_produce.EXIT_FAILED
    assert cmd_produce.main(parse_args(broker, topics, "--from", str(export), "--create-topics"), []) == 0
    assert len(consume_all(broker, topics["tickets"], 1)) == 1


def test_unreadable_file_exits_3(broker, topics, tmp_path):
    assert cmd_produce.main(parse_args(broker, topics, "--from", str(tmp_path / "missing.jsonl")), []) == 3


@pytest.mark.parametrize("content, reason", [(b'{"event_type": 7}\n', "unknown_event_type"), (b"null\n", "not_object")])
def test_dry_run_reports_without_a_broker(tmp_path, content, reason):
    export = tmp_path / "x.jsonl"
    export.write_bytes(content)
    from pipelines.kafka.settings import KafkaSettings

    report = backfill(export, KafkaSettings(bootstrap_servers="127.0.0.1:1"), {}, dry_run=True, progress=False)
    assert [(r.line, r.reason) for r in report.rejected] == [(1, reason)]
