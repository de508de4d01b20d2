"""The sinks on Beam's TestPipeline: one file per element, named by its key, read back equal."""
from __future__ import annotations

import json
from pathlib import Path

import apache_beam as beam
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from transforms.batch_files import (
    DEAD_LETTER_SCHEMA,
    LINK_SCHEMA,
    WriteBatchFiles,
    WriteManifests,
    batch_file_name,
    read_rows,
)


def test_each_keyed_chunk_becomes_one_parquet_file_named_by_its_key(tmp_path: Path):
    chunks = [
        ("part-0", [{"event_id": "e1", "journey_id": "j1", "customer_id": "c1"},
                    {"event_id": "e2", "journey_id": "j1", "customer_id": "c1"}]),
        ("part-3", [{"event_id": "e9", "journey_id": "j7", "customer_id": "c4"}]),
        ("part-4", []),  # an empty output still gets its file: the landing step requires it
    ]
    with TestPipeline(runner=FnApiRunner()) as p:
        written = p | beam.Create(chunks) | WriteBatchFiles(str(tmp_path), "links", LINK_SCHEMA)
        assert_that(written, equal_to([str(tmp_path / f"links-{key}.parquet") for key, _ in chunks]))
    assert sorted(f.name for f in tmp_path.iterdir()) == ["links-part-0.parquet", "links-part-3.parquet", "links-part-4.parquet"]
    for key, rows in chunks:
        assert read_rows(str(tmp_path / batch_file_name("links", key))) == rows


def test_a_retried_element_overwrites_its_own_file(tmp_path: Path):
    first = [{"topic": "t", "partition": 0, "offset": 5, "kafka_ts_ms": 1, "raw": b"x", "reason": "not_json", "detail": "a"}]
    again = [dict(first[0], detail="b")]
    for rows in (first, again):
        with TestPipeline(runner=FnApiRunner()) as p:
            _ = p | beam.Create([("t-0-5", rows)]) | WriteBatchFiles(str(tmp_path), "dead", DEAD_LETTER_SCHEMA)
    assert [f.name for f in tmp_path.iterdir()] == ["dead-t-0-5.parquet"]
    assert read_rows(str(tmp_path / "dead-t-0-5.parquet")) == again


def test_manifests_are_json_files_named_by_key(tmp_path: Path):
    docs = [("t-0-10", [{"topic": "t", "partition": 0, "records": 3}]), ("t-2-0", [])]
    with TestPipeline(runner=FnApiRunner()) as p:
        written = p | beam.Create(docs) | WriteManifests(str(tmp_path))
        assert_that(written, equal_to([str(tmp_path / "read-t-0-10.json"), str(tmp_path / "read-t-2-0.json")]))
    for key, doc in docs:
        assert json.loads((tmp_path / f"read-{key}.json").read_text()) == doc
