"""Streaming journeys: parse with dead letters, then one stateful DoFn per customer.

Pure logic over Beam state; no I/O (the Kafka reader and the store live in pipelines/streaming).

The per-customer state holds that customer's winning copy of every event (the conflicting-copies
rule of transforms.dedup: smallest content hash, then smallest Kafka coordinates) and the
coordinates of every losing copy. Whenever the set of winners changes, the customer's journeys
are recomputed from all of them with the same pure functions as the local engine
(transforms.service_metrics.assemble_customer) and a `CustomerUpdate` is emitted: the full
replacement of that customer's rows. So an update is a function of the SET of records the state
has seen, whatever their order or duplication.

State is cleaned up by an event-time timer at (the customer's latest element timestamp +
repeat window + allowed lateness). A record for a customer whose state is empty and whose
timestamp is already behind that horizon (judged with the source partition's watermark carried in
the record) is not assembled from an empty state: it goes to the `late_repair` output, and the
sink recomputes that customer from the events it has already landed plus this one. The sink
also merges every update with what it has landed before replacing rows, which is what keeps the
stored result a function of the set of events even when updates arrive out of order or after a
cleanup (docs/streaming.md, "Per customer: state, timers, late data" and "Exactly-once").
"""
from __future__ import annotations

import time
import typing
from typing import Any, Iterable, Iterator, Optional

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.utils.timestamp import Duration, Timestamp

from transforms.dedup import content_hash, copy_order
from transforms.events import Event
from transforms.journeys import DEFAULT_REPEAT_WINDOW_S
from transforms.metrics_config import MetricsConfig
from transforms.parse import ParseLimits, SourceRef, parse_record
from transforms.service_metrics import assemble_customer

Row = dict[str, Any]
DEAD_LETTERS = "dead_letters"
LATE_REPAIR = "late_repair"

COPY_FIELDS = ("event_id", "customer_id", "content_hash", "topic", "partition", "offset", "kafka_ts_ms")


def coordinates(row: Row) -> tuple[str, int, int]:
    return (row["topic"], row["partition"], row["offset"])


def copy_row(row: Row) -> Row:
    """What is kept of a losing copy: enough to account for its Kafka record."""
    return {name: row.get(name) for name in COPY_FIELDS}


def merge_copies(winners: dict[str, Row], copies: dict[tuple[str, int, int], Row], row: Row) -> bool:
    """Adds one valid record to (winners by event_id, losing copies by coordinates).

    Returns True when the winners changed. The same record seen again (same coordinates: a
    replay or a retry) changes nothing, so the result depends on the set of records only."""
    where = coordinates(row)
    current = winners.get(row["event_id"])
    if (current is not None and coordinates(current) == where) or where in copies:
        return False
    if current is None:
        winners[row["event_id"]] = row
        return True
    if copy_order(row) < copy_order(current):
        winners[row["event_id"]] = row
        copies[coordinates(current)] = copy_row(current)
        return True
    copies[where] = copy_row(row)
    return False


def assemble_update(customer_id: str, winners: Iterable[Row], copies: Iterable[Row], repeat_window_s: float,
                    config: MetricsConfig) -> Row:
    """A CustomerUpdate: the customer's winners, losing copies, and rows recomputed from all winners."""
    winners = sorted(winners, key=lambda r: r["event_id"])
    journeys, metrics, handoffs = assemble_customer(
        customer_id, [Event.from_row(r) for r in winners], repeat_window_s, config)
    links = []
    for journey in journeys:
        for event_id in journey.pop("event_ids"):
            links.append({"event_id": event_id, "journey_id": journey["journey_id"], "customer_id": customer_id})
    return {"customer_id": customer_id, "winners": winners, "copies": sorted(copies, key=coordinates),
            "journeys": journeys, "links": links, "metrics": metrics, "handoffs": handoffs}


class _Parse(beam.DoFn):
    """SourceRecord -> (customer_id, (event row with content_hash, partition watermark ms)), or a
    dead letter on the tagged output. Every record yields exactly one of the two."""

    def __init__(self, stream_of_topic: dict[str, str], limits: ParseLimits) -> None:
        self.stream_of_topic = stream_of_topic
        self.limits = limits
        self.dead = Metrics.counter("cxj_stream", "dead_letters")
        self.valid = Metrics.counter("cxj_stream", "valid_records")

    def process(self, record: tuple) -> Iterator[Any]:
        topic, partition, offset, ts_ms, value, watermark_ms = record
        now_us = int(time.time() * 1_000_000)
        kind, row = parse_record(value, SourceRef(topic, partition, offset, ts_ms),
                                 self.stream_of_topic.get(topic), now_us, self.limits)
        if kind == "dead":
            self.dead.inc()
            yield TaggedOutput(DEAD_LETTERS, row)
            return
        import json

        row["content_hash"] = content_hash(json.loads(row["payload"]))
        self.valid.inc()
        yield (row["customer_id"], (row, int(watermark_ms)))


class ParseRecords(beam.PTransform):
    """SourceRecords -> keyed event rows (main) and dead letters (tag `dead_letters`)."""

    def __init__(self, stream_of_topic: dict[str, str], limits: ParseLimits = ParseLimits()) -> None:
        super().__init__()
        self.stream_of_topic = dict(stream_of_topic)
        self.limits = limits

    def expand(self, records: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        return records | "ParseAndValidate" >> beam.ParDo(_Parse(self.stream_of_topic, self.limits)).with_outputs(
            DEAD_LETTERS, main="events")


class _AssembleCustomer(beam.DoFn):
    """Per customer: state of winners and losing copies; recompute on change; cleanup timer."""

    STATE = ReadModifyWriteStateSpec("customer", PickleCoder())
    EXPIRY = TimerSpec("expiry", TimeDomain.WATERMARK)

    def __init__(self, repeat_window_s: float, allowed_lateness_s: float, config: MetricsConfig) -> None:
        self.repeat_window_s = repeat_window_s
        self.allowed_lateness_s = allowed_lateness_s
        self.config = config
        self.updates = Metrics.counter("cxj_stream", "customer_updates")
        self.duplicates = Metrics.counter("cxj_stream", "duplicate_records")
        self.late = Metrics.counter("cxj_stream", "late_repair_records")
        self.expired = Metrics.counter("cxj_stream", "customer_states_expired")

    @property
    def horizon(self) -> Duration:
        return Duration.of(self.repeat_window_s + self.allowed_lateness_s)

    def process(self, element: tuple[str, tuple[Row, int]], timestamp: Timestamp = beam.DoFn.TimestampParam,
                state: Any = beam.DoFn.StateParam(STATE), expiry: Any = beam.DoFn.TimerParam(EXPIRY)) -> Iterator[Any]:
        customer_id, (row, watermark_ms) = element
        held: Optional[Row] = state.read()
        if held is None and timestamp + self.horizon < Timestamp.of(watermark_ms / 1000.0):
            # its customer's state is (or would already be) cleaned up: recompute from the store
            self.late.inc()
            yield TaggedOutput(LATE_REPAIR, {"customer_id": customer_id, "winners": [row], "copies": [],
                                             "journeys": None, "links": None, "metrics": None, "handoffs": None})
            return
        held = held or {"winners": {}, "copies": {}, "latest": timestamp}
        changed = merge_copies(held["winners"], held["copies"], row)
        latest = max(held["latest"], timestamp)
        held["latest"] = latest
        state.write(held)
        expiry.set(latest + self.horizon)
        if not changed:
            self.duplicates.inc()
            # a losing copy (or a replayed record) changes no journey but is accounted for by the sink
            yield {"customer_id": customer_id, "winners": [], "copies": [copy_row(row)] if coordinates(row) in held["copies"] else [],
                   "journeys": None, "links": None, "metrics": None, "handoffs": None, "copies_only": True}
            return
        self.updates.inc()
        yield assemble_update(customer_id, held["winners"].values(), held["copies"].values(),
                              self.repeat_window_s, self.config)

    @on_timer(EXPIRY)
    def expire(self, state: Any = beam.DoFn.StateParam(STATE)) -> Iterator[Any]:
        """The customer's rows are in the store; what comes later is handled as late data."""
        state.clear()
        self.expired.inc()
        return iter(())


class AssembleCustomerJourneys(beam.PTransform):
    """Keyed event rows -> CustomerUpdates (main) and late records (tag `late_repair`)."""

    def __init__(self, repeat_window_s: float = DEFAULT_REPEAT_WINDOW_S, allowed_lateness_s: float = 86_400.0,
                 config: MetricsConfig = MetricsConfig()) -> None:
        super().__init__()
        self.repeat_window_s = repeat_window_s
        self.allowed_lateness_s = allowed_lateness_s
        self.config = config

    def expand(self, keyed: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        return (keyed
                | "PerCustomer" >> beam.ParDo(
                    _AssembleCustomer(self.repeat_window_s, self.allowed_lateness_s, self.config)
                ).with_input_types(typing.Tuple[str, typing.Any]).with_outputs(LATE_REPAIR, main="updates"))
