"""File formats of a batch's intermediate results, and the sinks that write them.

Beam stages hand their results to the landing step as files in a per-batch directory:
Parquet for rows, JSON for the read stage's manifests. They are portable to any runner with a
shared filesystem (written through Beam's FileSystems) and bulk-loadable by DuckDB without
row-by-row inserts (docs/architecture.md, D8). Only the sink transforms at the end of a pipeline write them
(``WriteBatchFiles``, ``WriteManifests``); the transforms before hand on their results as
PCollection elements ``(file key, rows)``.

A file's name is ``<kind>-<key>.<ext>``, the key derived from the data (an event-id bucket,
a customer partition, the first Kafka offset of a chunk or read task), so a bundle that a
runner retries overwrites its own file instead of adding a second copy.
"""
from __future__ import annotations

import json
from typing import Any, Iterator, Union

import apache_beam as beam
import pyarrow as pa
import pyarrow.ipc  # noqa: F401  (pa.ipc)
import pyarrow.parquet as pq

EVENT_SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("event_type", pa.string()),
        ("at_us", pa.int64()),
        ("customer_id", pa.string()),
        ("occurred_at_text", pa.string()),
        ("ticket_id", pa.string()),
        ("chat_id", pa.string()),
        ("survey_id", pa.string()),
        ("channel", pa.string()),
        ("handler_type", pa.string()),
        ("agent_id", pa.string()),
        ("team", pa.string()),
        ("status", pa.string()),
        ("author", pa.string()),
        ("outcome", pa.string()),
        ("csat", pa.int32()),
        ("nps", pa.int32()),
        ("payload", pa.string()),
        ("topic", pa.string()),
        ("partition", pa.int32()),
        ("offset", pa.int64()),
        ("kafka_ts_ms", pa.int64()),
        ("content_hash", pa.string()),  # SHA-256 of the canonical JSON (transforms.dedup)
    ]
)

# Copies of an event that lost within the batch (a plain duplicate or a conflicting copy):
# staged so that every record read is accounted for and conflicts are never dropped silently.
COPY_SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("content_hash", pa.string()),
        ("winner_hash", pa.string()),  # the batch's winning copy; the landed one may still beat it
        ("payload", pa.string()),
        ("topic", pa.string()),
        ("partition", pa.int32()),
        ("offset", pa.int64()),
        ("kafka_ts_ms", pa.int64()),
    ]
)

DEAD_LETTER_SCHEMA = pa.schema(
    [
        ("topic", pa.string()),
        ("partition", pa.int32()),
        ("offset", pa.int64()),
        ("kafka_ts_ms", pa.int64()),
        ("raw", pa.binary()),
        ("reason", pa.string()),
        ("detail", pa.string()),
    ]
)

JOURNEY_SCHEMA = pa.schema(
    [
        ("journey_id", pa.string()),
        ("customer_id", pa.string()),
        ("status", pa.string()),
        ("started_at_us", pa.int64()),
        ("resolved_at_us", pa.int64()),
        ("last_event_at_us", pa.int64()),
        ("time_to_resolution_s", pa.float64()),
        ("first_response_s", pa.float64()),
        ("handoff_count", pa.int32()),
        ("team_handoff_count", pa.int32()),
        ("channel_hops", pa.int32()),
        ("touchpoint_count", pa.int32()),
        ("contact_count", pa.int32()),
        ("reopen_count", pa.int32()),
        ("csat", pa.int32()),
        ("nps", pa.int32()),
        ("fcr", pa.bool_()),
        ("channels", pa.list_(pa.string())),
        ("agents", pa.list_(pa.string())),
        ("teams", pa.list_(pa.string())),
        ("threads", pa.list_(pa.string())),
        ("event_count", pa.int32()),
    ]
)

# Service metrics per journey (transforms/service_metrics.py) and every handoff
# (transforms/handoff_kinds.py); landed into journey_metrics and journey_handoffs.
JOURNEY_METRICS_SCHEMA = pa.schema(
    [
        ("journey_id", pa.string()),
        ("customer_id", pa.string()),
        ("calendar", pa.string()),
        ("time_to_resolution_business_s", pa.float64()),
        ("first_response_business_s", pa.float64()),
        ("first_resolved_at_us", pa.int64()),
        ("first_resolution_s", pa.float64()),
        ("first_resolution_business_s", pa.float64()),
        ("resolution_count", pa.int32()),
        ("durably_resolved", pa.bool_()),
        ("durable_check_at_us", pa.int64()),
        ("repeat_contact_within_s", pa.float64()),
        ("repeat_contact_thread", pa.string()),
        ("repeat_contact_channel", pa.string()),
        ("one_contact_resolution", pa.bool_()),
        ("started_with_bot", pa.bool_()),
        ("bot_only", pa.bool_()),
        ("first_bot_response_s", pa.float64()),
        ("bot_handoff_at_us", pa.int64()),
        ("first_human_response_after_bot_s", pa.float64()),
        ("bot_to_human_handoffs", pa.int32()),
        ("human_to_bot_handoffs", pa.int32()),
        ("bot_to_bot_handoffs", pa.int32()),
        ("team_to_team_handoffs", pa.int32()),
        ("agent_to_agent_handoffs", pa.int32()),
        ("escalation_handoffs", pa.int32()),
        ("post_reply_reassignments", pa.int32()),
        ("distinct_human_agents", pa.int32()),
        ("distinct_teams", pa.int32()),
        ("agent_pingpong_immediate", pa.int32()),
        ("agent_pingpong_returns", pa.int32()),
        ("team_pingpong_immediate", pa.int32()),
        ("team_pingpong_returns", pa.int32()),
    ]
)

HANDOFF_SCHEMA = pa.schema(
    [
        ("journey_id", pa.string()),
        ("customer_id", pa.string()),
        ("seq", pa.int32()),
        ("at_us", pa.int64()),
        ("event_id", pa.string()),
        ("thread", pa.string()),
        ("kind", pa.string()),
        ("from_agent", pa.string()),
        ("from_team", pa.string()),
        ("from_is_bot", pa.bool_()),
        ("to_agent", pa.string()),
        ("to_team", pa.string()),
        ("to_is_bot", pa.bool_()),
        ("team_changed", pa.bool_()),
        ("agent_changed", pa.bool_()),
        ("escalation", pa.bool_()),
        ("after_first_reply", pa.bool_()),
    ]
)

LINK_SCHEMA = pa.schema([("event_id", pa.string()), ("journey_id", pa.string()), ("customer_id", pa.string())])

# The kinds of file a batch leaves behind, each one sink's output; the landing step finds
# them by these prefixes (pipelines/local/batch_manifest.py).
EVENT_FILES = "events"  # one winning copy per event_id, per event-id bucket
COPY_FILES = "copies"  # the other copies, per event-id bucket
DEAD_LETTER_FILES = "dead"  # per chunk of records read
MANIFEST_FILES = "read"  # per read task: what it covered of each planned range
JOURNEY_FILES = "journeys"  # the four assemble outputs, per customer partition of the history
LINK_FILES = "links"
JOURNEY_METRICS_FILES = "jmetrics"
HANDOFF_FILES = "handoffs"
ASSEMBLED_FILES = (JOURNEY_FILES, LINK_FILES, JOURNEY_METRICS_FILES, HANDOFF_FILES)

Rows = list[dict[str, Any]]
# (file key, rows): what every sink consumes. The rows may also come as an Arrow table of the
# sink's schema: the ingest stage hands events on as tables (cheap to pass through a shuffle).
KeyedRows = tuple[str, Union[Rows, pa.Table]]


def batch_file_name(kind: str, key: str, ext: str = "parquet") -> str:
    """The one naming rule of batch files: ``<kind>-<key>.<ext>``."""
    return f"{kind}-{key}.{ext}"


def rows_table(rows: Rows, schema: pa.Schema) -> pa.Table:
    """Rows (dicts; a missing key is null) as an Arrow table of ``schema``."""
    return pa.Table.from_pylist(rows, schema=schema)


def values_table(values: list[tuple[Any, ...]], schema: pa.Schema) -> pa.Table:
    """Rows given as tuples of values in the schema's column order, as an Arrow table: one
    ``pa.array`` per column of the whole list (a transpose in C, ``zip(*values)``), instead of
    a dict per row read back key by key (``rows_table``), which cost about twice as much."""
    if not values:
        return schema.empty_table()
    if len(values[0]) != len(schema):
        raise ValueError(f"rows of {len(values[0])} values for a schema of {len(schema)} columns")
    columns = zip(*values)
    return pa.table([pa.array(column, type=field.type) for column, field in zip(columns, schema)], schema=schema)


def table_bytes(table: pa.Table) -> bytes:
    """An Arrow table as Arrow IPC stream bytes: how tables cross a shuffle. Beam would pickle a
    table, which costs several times more per small table; bytes it passes on as they are."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def bytes_table(data: bytes) -> pa.Table:
    """The table that ``table_bytes`` encoded (equal schema, columns and rows)."""
    return pa.ipc.open_stream(data).read_all()


def write_rows(path: str, rows: Union[Rows, pa.Table], schema: pa.Schema) -> None:
    """Writes rows (dicts, or a table with the schema's columns) as one Parquet file of
    ``schema`` through Beam's FileSystems (local, gs://, s3://, ...)."""
    from apache_beam.io.filesystems import FileSystems

    if isinstance(rows, pa.Table):
        table = rows if rows.schema == schema else rows.select(schema.names).cast(schema)
    else:
        table = rows_table(rows, schema)
    with FileSystems.create(path) as handle:
        pq.write_table(table, handle)


def write_json(path: str, doc: Any) -> None:
    """Writes a small JSON document (a stage's manifest) through Beam's FileSystems."""
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.create(path, mime_type="application/json") as handle:
        handle.write(json.dumps(doc, sort_keys=True).encode("utf-8"))


def read_rows(path: str) -> list[dict[str, Any]]:
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path) as handle:
        return pq.read_table(handle).to_pylist()


class _WriteParquet(beam.DoFn):
    def __init__(self, directory: str, kind: str, schema: pa.Schema) -> None:
        self.directory = directory
        self.kind = kind
        self.schema = schema

    def process(self, keyed: KeyedRows) -> Iterator[str]:
        key, rows = keyed
        path = f"{self.directory}/{batch_file_name(self.kind, key)}"
        write_rows(path, rows, self.schema)
        yield path


class WriteBatchFiles(beam.ParDo):
    """Sink: each ``(file key, rows)`` element becomes one Parquet file ``<kind>-<key>.parquet``
    in ``directory`` (an element with no rows still writes its file: the landing step may
    require it). Outputs the paths written.

    A ParDo rather than a composite around one: every transform applied costs Beam ~10-20 ms
    of graph construction per batch, and a sink is one step."""

    def __init__(self, directory: str, kind: str, schema: pa.Schema) -> None:
        super().__init__(_WriteParquet(directory, kind, schema))


class _WriteJson(beam.DoFn):
    def __init__(self, directory: str, kind: str) -> None:
        self.directory = directory
        self.kind = kind

    def process(self, keyed: tuple[str, Any]) -> Iterator[str]:
        key, doc = keyed
        path = f"{self.directory}/{batch_file_name(self.kind, key, 'json')}"
        write_json(path, doc)
        yield path


class WriteManifests(beam.ParDo):
    """Sink: each ``(file key, document)`` element becomes one JSON file ``<kind>-<key>.json``
    in ``directory``. Outputs the paths written."""

    def __init__(self, directory: str, kind: str = MANIFEST_FILES) -> None:
        super().__init__(_WriteJson(directory, kind))
