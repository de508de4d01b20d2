"""The two pipelines of a batch: their labels are the docs' stage names, and the ingest graph's
files account for every record read — without a broker (records come from an in-memory log
with the Kafka reader's contract; the real reader is covered in tests/)."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterator, Optional

import apache_beam as beam
from apache_beam.pipeline import AppliedPTransform, PipelineVisitor
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline

from pipelines.kafka.read import OffsetRange, RangeRead
from pipelines.kafka.settings import KafkaSettings
from pipelines.local.batch_manifest import collect_staged, verified_reads
from pipelines.local.batch_stages import build_assemble, build_ingest
from transforms.batch_files import read_rows

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = KafkaSettings(bootstrap_servers="127.0.0.1:1")  # never contacted
STREAMS = {"cx.tickets": "tickets", "cx.chats": "chats", "cx.surveys": "surveys"}
# Where the composites live whose inner steps the docs name (a sink is a single step).
NAMED_INSIDE = ("transforms.ingest", "transforms.assemble", "pipelines.kafka.read")


class _TopLevel(PipelineVisitor):
    def __init__(self) -> None:
        self.stages: list[AppliedPTransform] = []

    def enter_composite_transform(self, node: AppliedPTransform) -> None:
        self._take(node)

    def visit_transform(self, node: AppliedPTransform) -> None:
        self._take(node)

    def _take(self, node: AppliedPTransform) -> None:
        if node.full_label and "/" not in node.full_label:
            self.stages.append(node)


def graph_stages(pipeline: beam.Pipeline) -> list[tuple[str, list[str]]]:
    """(top-level label, labels of its inner steps if it is one of ours) in application order."""
    visitor = _TopLevel()
    pipeline.visit(visitor)
    out = []
    for node in visitor.stages:
        inner = [part.full_label.split("/")[1] for part in node.parts] if type(node.transform).__module__ in NAMED_INSIDE else []
        out.append((node.full_label, inner))
    return out


def built_stages() -> dict[str, list[tuple[str, list[str]]]]:
    ingest = beam.Pipeline()
    build_ingest(ingest, [OffsetRange("cx.tickets", 0, 0, 10)], SETTINGS, STREAMS, 0, "/nowhere")
    assemble = beam.Pipeline()
    build_assemble(assemble, ["/nowhere/part=0/data_0.parquet"], "/nowhere", 3600.0)
    return {"ingest": graph_stages(ingest), "assemble": graph_stages(assemble)}


def documented_stages(cell: str) -> list[tuple[str, list[str]]]:
    """`Label` (`Inner` → `Inner`) → `Label` ... parsed: backticked names outside parentheses are
    stages, inside they are the stage's inner steps."""
    stages: list[tuple[str, list[str]]] = []
    depth = 0
    for token in re.findall(r"`[^`]+`|[()]", cell):
        if token == "(":
            depth += 1
        elif token == ")":
            depth -= 1
        elif depth == 0:
            stages.append((token.strip("`"), []))
        else:
            stages[-1][1].append(token.strip("`"))
    return stages


def architecture_table() -> dict[str, str]:
    text = (ROOT / "docs" / "architecture.md").read_text()
    rows = re.findall(r"^\| (ingest|assemble) \| (.+?) \| .+\|$", text, flags=re.MULTILINE)
    return dict(rows)


def readme_how_it_works() -> str:
    text = (ROOT / "README.md").read_text()
    return text.split("## How it works", 1)[1].split("\n## ", 1)[0]


def test_architecture_stage_table_names_exactly_the_graph_labels():
    table = architecture_table()
    assert set(table) == {"ingest", "assemble"}, "docs/architecture.md has one row per pipeline"
    built = built_stages()
    for stage, cell in table.items():
        assert documented_stages(cell) == built[stage], f"docs/architecture.md, row {stage!r}"


def test_readme_how_it_works_names_exactly_the_graph_stages():
    section = readme_how_it_works()
    labels = {label for stages in built_stages().values() for label, _ in stages}
    named = set(re.findall(r"`([A-Z][A-Za-z]+)`", section))
    assert named == labels, f"README 'How it works' names {sorted(named - labels)} not in the graph, misses {sorted(labels - named)}"
    drawn = set(re.findall(r"▶ ([A-Z][A-Za-z]+)", section))
    assert drawn and drawn <= labels, f"the README diagram draws stages the graph does not have: {sorted(drawn - labels)}"


def test_documented_stages_parser():
    assert documented_stages("`A` (`B` → `C`; text) → `D`, then `E`") == [("A", ["B", "C"]), ("D", []), ("E", [])]


# --- the ingest graph's files account for every record read ------------------------------

def _valid(event_id: str, note: str = "") -> bytes:
    return json.dumps({"event_id": event_id, "event_type": "ticket.created", "occurred_at": "2026-11-01T09:30:00Z",
                       "customer_id": "c1", "schema_version": 1, "ticket_id": "T-1", "channel": "email",
                       "note": note}).encode()


LOG: dict[tuple[str, int], list[Optional[bytes]]] = {
    ("cx.tickets", 0): [_valid(f"e{i}") for i in range(30)] + [b"{broken", None, b"[1]"],
    ("cx.tickets", 1): [_valid(f"e{i}") for i in range(10)] + [_valid("e3", "conflict"), b"\xff"],
}


def log_reader(settings: KafkaSettings, task: list[OffsetRange], timeout_s: float, chunk_records: int = 5000,
               budget_bytes: Optional[int] = None, report: Optional[dict] = None) -> Iterator[list[tuple]]:
    for r in task:
        entry = report[(r.topic, r.partition)] = RangeRead(r.topic, r.partition, r.start, r.stop, r.stop)  # type: ignore[index]
        values = LOG[(r.topic, r.partition)][r.start:r.stop]
        entry.records, entry.first, entry.last = len(values), r.start, r.stop - 1
        records = [(r.topic, r.partition, r.start + i, 0, v) for i, v in enumerate(values)]
        for i in range(0, len(records), chunk_records):
            yield records[i:i + chunk_records]


def test_ingest_files_account_for_every_record_read(tmp_path: Path):
    ranges = [OffsetRange(t, p, 0, len(values)) for (t, p), values in LOG.items()]
    pipeline = TestPipeline(runner=FnApiRunner())
    build_ingest(pipeline, ranges, SETTINGS, STREAMS, 1_795_000_000_000_000, str(tmp_path), read_tasks=2, reader=log_reader)
    pipeline.run().wait_until_finish()

    reads = verified_reads(tmp_path, ranges, batch_id=1)
    staged = collect_staged(tmp_path)
    events = [row for f in staged.events for row in read_rows(str(f))]
    copies = [row for f in staged.copies for row in read_rows(str(f))]
    dead = [row for f in staged.dead for row in read_rows(str(f))]
    consumed = sum(r["records"] for r in reads)
    assert consumed == 45
    assert (len(events), len(copies), len(dead)) == (30, 11, 4)  # e0..e29 once; 10 duplicates + 1 conflict
    assert sorted(row["reason"] for row in dead) == ["empty_message", "not_json", "not_object", "not_utf8"]
    covered = sorted((row["topic"], row["partition"], row["offset"]) for row in events + copies + dead)
    assert covered == sorted((t, p, o) for (t, p), values in LOG.items() for o in range(len(values)))
