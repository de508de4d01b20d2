"""Beam wrapper around journey assembly: group a customer's events, apply the pure function."""
from __future__ import annotations

from typing import Any, Iterable, Iterator

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput

from transforms.events import Event
from transforms.journeys import assemble_journeys

JOURNEYS = "journeys"
LINKS = "links"


class _AssembleDoFn(beam.DoFn):
    def __init__(self, repeat_window_s: float) -> None:
        self.repeat_window_s = repeat_window_s
        self.journeys = Metrics.counter("cxj", "journeys_assembled")
        self.customers = Metrics.counter("cxj", "customers_assembled")

    def process(self, keyed: tuple[str, Iterable[dict[str, Any]]]) -> Iterator[Any]:
        customer_id, rows = keyed
        self.customers.inc()
        for journey in assemble_journeys(customer_id, (Event.from_row(r) for r in rows), self.repeat_window_s):
            self.journeys.inc()
            event_ids = journey.pop("event_ids")
            yield journey
            for event_id in event_ids:
                yield TaggedOutput(
                    LINKS, {"event_id": event_id, "journey_id": journey["journey_id"], "customer_id": customer_id}
                )


class AssembleJourneys(beam.PTransform):
    """Event rows of the touched customers -> journey rows ('journeys') and event links ('links')."""

    def __init__(self, repeat_window_s: float) -> None:
        super().__init__()
        self.repeat_window_s = repeat_window_s

    def expand(self, events: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        return (
            events
            | "KeyByCustomer" >> beam.Map(lambda row: (row["customer_id"], row))
            | "GroupByCustomer" >> beam.GroupByKey()
            | "Assemble" >> beam.ParDo(_AssembleDoFn(self.repeat_window_s)).with_outputs(LINKS, main=JOURNEYS)
        )
