"""`cxj produce --from FILE` on hostile exports: every line read is either sent or rejected.

Each test runs the real `cxj produce` as a subprocess against the real local broker and then
reads the topics back: the records on the broker must be exactly the lines that were not
rejected (byte for byte), the rejects file must hold every other line with its reason, and the
summary line must report the same counts. Nothing in between, nothing twice.
"""
from __future__ import annotations

import collections
import gzip
import json
import re
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import pytest

from tests.support import new_topics

TYPES = (("ticket.created", "tickets", {"ticket_id": "T1", "channel": "email"}),
         ("chat.started", "chats", {"chat_id": "C1", "channel": "chat"}),
         ("survey.responded", "surveys", {"survey_id": "S1", "ticket_id": "T1", "csat": 4}))


def good_line(n: int) -> bytes:
    event_type, _stream, fields = TYPES[n % 3]
    doc: dict[str, Any] = {"event_id": f"h-{n}", "event_type": event_type, "occurred_at": "2026-03-02T09:00:00Z",
                           "customer_id": f"hc-{n % 17}", "schema_version": 1, **fields}
    return json.dumps(doc).encode()


def deep_array(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def deep_object(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


def deep_inside_event(depth: int) -> bytes:
    """A valid event with a deeply nested unknown field: the whole line must be rejected."""
    return good_line(1)[:-1] + b', "x_deep": ' + deep_array(depth) + b"}"


def huge_event(size: int) -> bytes:
    return good_line(2)[:-1] + b', "x_pad": "' + b"p" * size + b'"}'


def produce(broker, topics: dict[str, str], path: Path, rejects: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pipelines.cli", "produce", "--from", str(path), "--no-progress",
           "--rejects", str(rejects), "--bootstrap-servers", broker.bootstrap_servers,
           "--topic-tickets", topics["tickets"], "--topic-chats", topics["chats"], "--topic-surveys", topics["surveys"],
           *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def on_broker(broker, topics: dict[str, str], expected: int) -> collections.Counter:
    """Every record value on the three topics: polls until ``expected`` arrived (deadline 20 s),
    then once more for anything beyond it."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(**broker.client_kwargs(), enable_auto_commit=False, group_id=None)
    try:
        parts = [TopicPartition(t, p) for t in topics.values() for p in sorted(consumer.partitions_for_topic(t) or [])]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        values: collections.Counter = collections.Counter()
        deadline = time.monotonic() + 20.0
        while sum(values.values()) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                values.update(r.value for r in batch)
        for batch in consumer.poll(timeout_ms=500).values():
            values.update(r.value for r in batch)
        return values
    finally:
        consumer.close()


def summary_counts(stderr: str) -> tuple[int, int, int]:
    """(sent, lines, rejected) from the summary line."""
    match = re.search(r"sent (\d+) of (\d+) lines .* rejected (\d+)", stderr)
    assert match, stderr
    return int(match[1]), int(match[2]), int(match[3])


def account(broker, topics, lines: list[bytes], rejects: Path, result: subprocess.CompletedProcess) -> dict[int, str]:
    """Asserts sent + rejected == lines read, exactly, against the broker; returns line -> reason."""
    rejected = {r["line"]: r["reason"] for r in map(json.loads, rejects.read_text().splitlines())}
    numbered = {n: line for n, line in enumerate(lines, 1) if line.strip()}
    assert set(rejected) <= set(numbered), "a rejected line number that is not a non-blank line"
    expected_sent = collections.Counter(line for n, line in numbered.items() if n not in rejected)
    sent = on_broker(broker, topics, sum(expected_sent.values()))
    assert sent == expected_sent, "the broker holds exactly the lines that were not rejected"
    assert summary_counts(result.stderr) == (sum(expected_sent.values()), len(numbered), len(rejected))
    assert "Traceback" not in result.stderr
    return rejected


def test_hostile_lines_are_rejected_one_by_one_and_the_rest_is_sent(broker, tmp_path):
    topics = new_topics(broker)
    hostile: dict[str, list[bytes]] = {
        "deep": [deep_array(d) for d in (10, 1_000, 10_000, 100_000)] + [deep_object(d) for d in (1_000, 100_000)]
        + [deep_inside_event(d) for d in (64, 5_000, 100_000)],
        "utf8": [b"\xff\xfe not utf-8", good_line(4)[:-3] + b'\xc3"}', b'{"event_type": "ticket.created", "x": "\xed\xa0\x80"}'],
        "huge": [huge_event(3 * 1024 * 1024), b"[" + b"1," * 600_000 + b"1]"],
        "json": [b"{not json", b"null", b'"just a string"', b"NaN"],
    }
    blanks = [b"", b"   ", b"\r", b"\t"]
    lines: list[bytes] = []
    kinds: dict[int, str] = {}
    bad = [(kind, line) for kind, group in hostile.items() for line in group]
    for i in range(60):
        lines.append(good_line(100 + i))
        if i < len(bad):
            kinds[len(lines) + 1] = bad[i][0]
            lines.append(bad[i][1])
        if i < len(blanks):
            lines.append(blanks[i])
    export = tmp_path / "hostile.jsonl"
    export.write_bytes(b"\n".join(lines) + b"\n")
    rejects = tmp_path / "rejects.jsonl"

    result = produce(broker, topics, export, rejects)

    assert result.returncode == 1, result.stderr  # some lines rejected, all others sent
    rejected = account(broker, topics, lines, rejects, result)
    assert set(rejected) == set(kinds), "exactly the hostile lines are rejected, every good one is sent"
    allowed = {"deep": {"too_deep", "not_object", "invalid:too_deep"}, "utf8": {"not_utf8", "invalid:not_utf8"},
               "huge": {"invalid:too_large", "not_object"}, "json": {"not_json", "not_object"}}
    for number, kind in kinds.items():
        assert rejected[number] in allowed[kind], (number, kind, rejected[number])
    assert rejected[[n for n, k in kinds.items() if k == "deep"][3]] == "too_deep"  # the 100k-deep array


def test_huge_lines_without_validation_are_rejected_not_failed(broker, tmp_path):
    """With --no-validate a line over the producer's limit is a rejection (too_large), not a
    broker failure that a rerun could fix; the lines around it are sent."""
    topics = new_topics(broker)
    lines = [good_line(1), huge_event(3 * 1024 * 1024), good_line(2), deep_array(100_000), good_line(3)]
    export = tmp_path / "huge.jsonl"
    export.write_bytes(b"\n".join(lines) + b"\n")
    rejects = tmp_path / "rejects.jsonl"
    result = produce(broker, topics, export, rejects, "--no-validate")
    assert result.returncode == 1, result.stderr
    assert account(broker, topics, lines, rejects, result) == {2: "too_large", 4: "too_deep"}


def gzip_export(lines: list[bytes]) -> bytes:
    return gzip.compress(b"\n".join(lines) + b"\n", compresslevel=6, mtime=0)


def readable_prefix(cut: bytes) -> bytes:
    """What any gzip reader can decompress from a cut-short file (zlib, independent of the CLI)."""
    return zlib.decompressobj(wbits=31).decompress(cut)


@pytest.mark.parametrize("cut_at", [0.15, 0.5, 0.85, "trailer", "last-byte"])
def test_truncated_gzip_sends_what_came_before_and_says_where_it_stopped(broker, tmp_path, cut_at):
    topics = new_topics(broker)
    lines = []
    for n in range(3000):
        lines.append(good_line(n) if n % 97 else deep_array(50_000))  # some hostile lines in between
        if n % 500 == 7:
            lines.append(b"")
    whole = gzip_export(lines)
    end = {"trailer": len(whole) - 8, "last-byte": len(whole) - 1}.get(cut_at)  # type: ignore[arg-type]
    cut = whole[: end if end is not None else int(len(whole) * float(cut_at))]  # type: ignore[arg-type]
    export = tmp_path / "cut.jsonl.gz"
    export.write_bytes(cut)
    prefix = readable_prefix(cut)
    complete = prefix.split(b"\n")[:-1]  # after the last newline: an incomplete line, never sent
    partial = len(prefix) - len(b"\n".join(complete)) - (1 if complete else 0)
    rejects = tmp_path / "rejects.jsonl"

    result = produce(broker, topics, export, rejects)

    assert result.returncode == 3, result.stderr
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1, result.stderr
    assert "truncated" in errors[0] and f"after line {len(complete)}" in errors[0] and str(export) in errors[0], errors[0]
    assert (f"incomplete line of {partial} bytes" in errors[0]) == (partial > 0), errors[0]
    rejected = account(broker, topics, complete, rejects, result)
    assert set(rejected.values()) <= {"too_deep"}
    assert len(rejected) == sum(1 for line in complete if line.startswith(b"[["))


def test_an_unwritable_rejects_file_is_found_before_anything_is_sent(broker, tmp_path):
    topics = new_topics(broker)
    export = tmp_path / "export.jsonl"
    export.write_bytes(b"\n".join([good_line(1), b"{not json", good_line(2)]) + b"\n")
    rejects = tmp_path / "no-such-dir" / "rejects.jsonl"
    result = produce(broker, topics, export, rejects)
    assert result.returncode == 3, result.stderr
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "cannot write the rejects file" in errors[0] and str(rejects) in errors[0], result.stderr
    assert "nothing was sent" in errors[0] and "Traceback" not in result.stderr
    assert on_broker(broker, topics, 0) == collections.Counter()
