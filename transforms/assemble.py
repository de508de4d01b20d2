"""Journey assembly as a Beam composite.

The store exports the touched customers' full history as files partitioned by a hash of
customer_id, so all events of a customer are in one file: each file is assembled on its own,
with no shuffle. The composite writes nothing; its four outputs are ``(partition key, rows)``
elements that the sinks at the end of the pipeline write under the partition's name (a retried
bundle rewrites its own files):

    history files | AssembleJourneys -> .journeys, .links, .journey_metrics, .handoffs
"""
from __future__ import annotations

from pathlib import PurePosixPath
from typing import Iterable, Iterator, Union

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput

from transforms.batch_files import KeyedRows, Rows
from transforms.events import EVENT_FIELDS, Event
from transforms.metrics_config import MetricsConfig
from transforms.service_metrics import assemble_customer

# Output tags (attribute names of the composite's result)
JOURNEYS = "journeys"
LINKS = "links"
JOURNEY_METRICS = "journey_metrics"
HANDOFFS = "handoffs"


def partition_dir_key(directory_name: str) -> str:
    """A history partition's key (``part=7`` -> ``part-7``): the key of the files assembled
    from it."""
    return directory_name.replace("=", "-") or "all"


def partition_key(history_file: str) -> str:
    """The key of the partition a history file belongs to (``part=7/data_0.parquet``)."""
    return partition_dir_key(PurePosixPath(history_file).parent.name)


def read_history(path: str) -> dict[str, list[Event]]:
    """A history file's events by customer, in the file's order (customers in order of their
    first event in the file).

    Built column by column: the file's columns are turned into Python lists once and zipped
    into Events, instead of a dict per row (``to_pylist``) and a dict per Event (``from_row``),
    which cost more than a third of assembly. The values are the same either way. A column the
    file lacks reads as None, as ``Event.from_row`` reads a missing key."""
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path) as handle:
        table = pq.read_table(handle)
    present = set(table.column_names)
    columns = [table.column(name).to_pylist() if name in present else [None] * table.num_rows
               for name in EVENT_FIELDS]
    by_customer: dict[str, list[Event]] = {}
    customer = EVENT_FIELDS.index("customer_id")
    for values in zip(*columns):
        event = Event(*values)
        events = by_customer.get(values[customer])
        if events is None:
            by_customer[values[customer]] = [event]
        else:
            events.append(event)
    return by_customer


def assemble_events(by_customer: Iterable[tuple[str, list[Event]]], repeat_window_s: float,
                    config: MetricsConfig = MetricsConfig()) -> tuple[Rows, Rows, Rows, Rows]:
    """(journey rows, event -> journey links, journey_metrics rows, journey_handoffs rows) for
    the customers given as (customer_id, all their events)."""
    journeys: Rows = []
    links: Rows = []
    metrics: Rows = []
    handoffs: Rows = []
    for customer_id, events in by_customer:
        customer_journeys, customer_metrics, customer_handoffs = assemble_customer(
            customer_id, events, repeat_window_s, config)
        for journey in customer_journeys:
            journey_id = journey["journey_id"]
            links.extend({"event_id": event_id, "journey_id": journey_id, "customer_id": customer_id}
                         for event_id in journey.pop("event_ids"))
            journeys.append(journey)
        metrics.extend(customer_metrics)
        handoffs.extend(customer_handoffs)
    return journeys, links, metrics, handoffs


def assemble_rows(rows: Rows, repeat_window_s: float, config: MetricsConfig = MetricsConfig()) -> tuple[Rows, Rows, Rows, Rows]:
    """(journey rows, event -> journey links, journey_metrics rows, journey_handoffs rows) for
    all customers present in ``rows`` (event rows, as ``Event.to_row`` gives them)."""
    by_customer: dict[str, list[Event]] = {}
    for row in rows:
        by_customer.setdefault(row["customer_id"], []).append(Event.from_row(row))
    return assemble_events(by_customer.items(), repeat_window_s, config)


class _AssemblePartition(beam.DoFn):
    """One partition's history file -> its journeys on the main output and the links, service
    metrics and handoffs on their tags; all four always, even empty (the landing step requires
    them). The file is read here, not in a step of its own: handing a whole partition's events
    from one step to the next costs Beam an encoding of them to estimate their size."""

    def __init__(self, repeat_window_s: float, config: MetricsConfig) -> None:
        self.repeat_window_s = repeat_window_s
        self.config = config
        self.journeys = Metrics.counter("cxj", "journeys_assembled")

    def process(self, history_file: str) -> Iterator[Union[KeyedRows, TaggedOutput]]:
        key = partition_key(history_file)
        journeys, links, metrics, handoffs = assemble_events(read_history(history_file).items(), self.repeat_window_s,
                                                             self.config)
        self.journeys.inc(len(journeys))
        yield key, journeys
        yield TaggedOutput(LINKS, (key, links))
        yield TaggedOutput(JOURNEY_METRICS, (key, metrics))
        yield TaggedOutput(HANDOFFS, (key, handoffs))


class AssembleJourneys(beam.PTransform):
    """History files (one partition of whole customers each) -> ``.journeys``, ``.links``
    (event -> journey), ``.journey_metrics`` (service metrics) and ``.handoffs``, each as
    ``(partition key, rows)``."""

    def __init__(self, repeat_window_s: float, config: MetricsConfig = MetricsConfig()) -> None:
        super().__init__()
        self.repeat_window_s = repeat_window_s
        self.config = config

    def expand(self, history_files: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        return history_files | "AssemblePartition" >> beam.ParDo(
            _AssemblePartition(self.repeat_window_s, self.config)).with_outputs(LINKS, JOURNEY_METRICS, HANDOFFS, main=JOURNEYS)
