"""AssembleJourneys on Beam's TestPipeline: its outputs equal what the pure functions give.

History files are written here as the store exports them (one directory per customer
partition); the expected journeys come from ``transforms.journeys.assemble_journeys`` and the
service metrics and handoffs from ``transforms.service_metrics.assemble_customer``, called on
each customer's events directly.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import BeamAssertException, assert_that, equal_to

from transforms.assemble import AssembleJourneys, partition_key
from transforms.events import Event
from transforms.journeys import assemble_journeys
from transforms.service_metrics import assemble_customer

H = 3600 * 1_000_000
WINDOW_S = 7 * 86_400.0


def customer_events(customer: str, t0: int) -> list[Event]:
    """A ticket answered, reassigned and resolved; a chat ten days later (a journey of its own); a survey on the ticket."""
    n = iter(range(100))

    def ev(t: int, event_type: str, **fields: Any) -> Event:
        return Event(event_id=f"{customer}-e{next(n):02d}", event_type=event_type, at_us=t0 + t, customer_id=customer, **fields)

    return [
        ev(0, "ticket.created", ticket_id=f"{customer}-T1", channel="email"),
        ev(1 * H, "ticket.assigned", ticket_id=f"{customer}-T1", handler_type="agent", agent_id="a1", team="billing"),
        ev(2 * H, "ticket.message", ticket_id=f"{customer}-T1", author="agent", channel="email"),
        ev(3 * H, "ticket.assigned", ticket_id=f"{customer}-T1", handler_type="agent", agent_id="a2", team="tech"),
        ev(5 * H, "ticket.status_changed", ticket_id=f"{customer}-T1", status="solved"),
        ev(6 * H, "survey.responded", survey_id=f"{customer}-S1", ticket_id=f"{customer}-T1", csat=4),
        ev(240 * H, "chat.started", chat_id=f"{customer}-C1", channel="web"),
        ev(241 * H, "chat.ended", chat_id=f"{customer}-C1", outcome="abandoned"),
    ]


def write_history(root: Path, partitions: dict[str, list[Event]]) -> list[str]:
    """One Parquet file per partition directory, as the store's partitioned export writes them."""
    files = []
    for name, events in partitions.items():
        directory = root / name
        directory.mkdir(parents=True)
        path = directory / "data_0.parquet"
        pq.write_table(pa.Table.from_pylist([e.to_row() for e in events]), path)
        files.append(str(path))
    return files


def canonical(rows: list[dict[str, Any]]) -> list[str]:
    return sorted(json.dumps(row, sort_keys=True, default=str) for row in rows)


def keyed_rows_equal(expected: dict[str, list[dict[str, Any]]]) -> Callable[[list], None]:
    """Matcher: one ``(partition key, rows)`` element per partition, rows equal in any order."""
    want = {key: canonical(rows) for key, rows in expected.items()}

    def matcher(actual: list) -> None:
        got = {key: canonical(rows) for key, rows in actual}
        if len(got) != len(actual) or got != want:
            raise BeamAssertException(f"expected {want}, got {got}")

    return matcher


def expected_outputs(partitions: dict[str, list[Event]]) -> dict[str, dict[str, list]]:
    out: dict[str, dict[str, list]] = {"journeys": {}, "links": {}, "journey_metrics": {}, "handoffs": {}}
    for name, events in partitions.items():
        key = name.replace("=", "-")
        journeys, links, metrics, handoffs = [], [], [], []
        for customer in sorted({e.customer_id for e in events}):
            mine = [e for e in events if e.customer_id == customer]
            for journey in assemble_journeys(customer, mine, WINDOW_S):
                links += [{"event_id": e, "journey_id": journey["journey_id"], "customer_id": customer}
                          for e in journey["event_ids"]]
                journeys.append({k: v for k, v in journey.items() if k != "event_ids"})
            _, customer_metrics, customer_handoffs = assemble_customer(customer, mine, WINDOW_S)
            metrics += customer_metrics
            handoffs += customer_handoffs
        out["journeys"][key], out["links"][key] = journeys, links
        out["journey_metrics"][key], out["handoffs"][key] = metrics, handoffs
    return out


def test_journeys_links_metrics_and_handoffs_equal_the_pure_functions(tmp_path: Path):
    partitions = {
        "part=0": customer_events("c1", 1_790_000_000_000_000) + customer_events("c2", 1_790_100_000_000_000),
        "part=1": customer_events("c3", 1_790_200_000_000_000)[::-1],  # the order within a file does not matter
    }
    files = write_history(tmp_path, partitions)
    expected = expected_outputs(partitions)
    assert len(expected["journeys"]["part-0"]) == 4, "two journeys per customer (ticket, then chat ten days later)"
    assert expected["handoffs"]["part-0"], "the reassignment is a handoff"

    with TestPipeline(runner=FnApiRunner()) as p:
        out = p | beam.Create(files) | AssembleJourneys(WINDOW_S)
        for tag in ("journeys", "links", "journey_metrics", "handoffs"):
            assert_that(out[tag], keyed_rows_equal(expected[tag]), label=f"Check{tag}")


def test_every_partition_gets_all_four_outputs_even_when_empty(tmp_path: Path):
    """A partition whose events belong to no journey yet (a survey on an unknown ticket) still
    yields its four outputs, empty: the landing step requires one file of each per partition."""
    lone_survey = [Event(event_id="s1", event_type="survey.responded", at_us=1_790_000_000_000_000,
                         customer_id="c9", survey_id="S9", ticket_id="T-unknown", csat=2)]
    files = write_history(tmp_path, {"part=5": lone_survey})

    with TestPipeline(runner=FnApiRunner()) as p:
        out = p | beam.Create(files) | AssembleJourneys(WINDOW_S)
        for tag in ("journeys", "links", "journey_metrics", "handoffs"):
            assert_that(out[tag], equal_to([("part-5", [])]), label=f"Empty{tag}")


def test_partition_key_names_the_directory():
    assert partition_key("/x/history/part=12/data_0.parquet") == "part-12"
    assert partition_key("data_0.parquet") == "all"
