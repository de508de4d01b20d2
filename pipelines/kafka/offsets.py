"""Asking the broker where its partitions begin and end, and what a few offsets hold.

Two facts about brokers shape this module:

* Tansu 0.6 (the local broker) answers ListOffsets with the base offset of a partition's last
  record batch, not its end; a fetch response's high watermark is right. So end offsets are
  confirmed by fetching at the reported end and reading the high watermark of the response.
* A confirmation can come back incomplete (a fetch response not there yet on a loaded
  machine) and a log can change between two requests, so ends are only trusted after two
  consecutive complete answers on this reader that agree (the second may only have grown),
  within the configured timeout. The first of the two may be the previous look-up's answer
  (``_confirmed``): a running pipeline looks up ends at least once per cycle, so one round of
  requests per look-up suffices while the answers keep agreeing; any disagreement (a log that
  shrank) or a reader without an earlier answer takes fresh rounds until two agree, as before.

Round trips are what a micro-batch cycle waits for (docs/performance.md, "Per-cycle cost and
freshness"), so the probe fetches little per partition (``PROBE_FETCH_BYTES``: it needs one
record, or a fetch response's high watermark; a larger record batch still comes whole), and
``wait_for_records`` lets a caught-up ``--follow`` sleep inside one long-polling fetch that
returns as soon as a record arrives.

The probe stops fetching a partition it has its answer for by dropping it from its assignment
(``_stop_fetching``), not by pausing it. Either way the rest of a fetched batch is skipped
without being decoded (the local broker answers a 64 KB fetch with up to tens of thousands of
records). But kafka-python 3.0 parks a paused partition's buffered records and brings them back
only while its in-line slot is None; a drained record set left in that slot is not None, so a
parked partition was never fetched again by the reused probe, and every later look-up of its end
timed out (tests/test_probe_reuse.py).

What a few offsets hold (``records_at``) is fetched by a consumer of its own, whose fetches may
wait longer. Kafka answers a fetch as soon as it has records; the local broker answers when its
read is done or the fetch's wait has passed, whichever comes first, and with nothing but the
high watermark in the second case. Its read time grows with the number of record batches in a
partition (about 2-3 ms per 1,000), so a log written in small batches (a producer sending one
record at a time, as `cxj simulate --rate` does) outgrew a 10 ms wait after about 30,000 of
them: every look-up of a landed offset came back empty, and `run --follow` retried the same
look-up every 30 s for good. An answer without records below the high watermark now makes the
wait longer (``RECORD_WAIT_MS``), and the longer wait is kept for later look-ups.
"""
from __future__ import annotations

import logging
import time
from functools import partial
from typing import Callable, Iterable, Optional

from pipelines.kafka.settings import KafkaSettings, failure_cause, probe_tls
from pipelines.kafka.source_log import Fingerprint, fingerprint

PartitionKey = tuple[str, int]

log = logging.getLogger("cxj.kafka.offsets")

# What the probe consumer fetches per partition at most: it reads one record (or just the high
# watermark of the response). Brokers return a whole record batch even when it is larger
# (KIP-74; the local broker does too), so this caps the bytes decoded, never what can be read.
PROBE_FETCH_BYTES = 64 * 1024

# How long a fetch of ``records_at`` may wait for the broker to gather records: the first wait,
# the factor it grows by when the broker answered without the records it holds (module
# docstring), and the longest. Its offsets are below their logs' ends, so Kafka answers at once
# whatever the wait; only a broker that stops reading when the wait has passed needs more.
RECORD_WAIT_MS = (10, 4, 2000)

# kafka-python refreshes metadata at most once per 100 ms: asked again sooner, it waits out the
# rest. A run's last look-ups come back to back, and waiting there cost every `run --once` about
# 0.1 s; metadata this young is used as it is (no fresher answer was to be had without waiting).
METADATA_REUSE_S = 0.1

# How long one poll of the end offsets' confirmation waits (``OffsetReader._confirm_ends``). Its
# fetches start at the reported ends, so they bring no records, and kafka-python's poll then waits
# out its whole timeout although the high watermark has arrived: with 100 ms, half the first
# look-ups of a run took 0.12 s instead of 0.015 s. The loop polls again until every partition
# has answered or the deadline passes, so a short poll only means more turns of it.
CONFIRM_POLL_MS = 10


def _stop_fetching(consumer, waiting: set) -> None:  # type: ignore[no-untyped-def, type-arg]
    """Narrows the consumer's assignment to the partitions still waiting for an answer.

    Unassigned partitions' buffered records are discarded undecoded, and the waiting ones keep
    their positions (kafka-python keeps a partition's state across assignments that both hold
    it). Nothing to do when nothing is left waiting: the caller's loop ends, and the next
    look-up assigns afresh.
    """
    if waiting and set(consumer.assignment()) != waiting:
        consumer.assign(list(waiting))


def _close_quietly(consumer) -> None:  # type: ignore[no-untyped-def]
    """Closes ``consumer`` if there is one; closing a consumer of a dead broker must not mask the
    real error, and one that cannot close cleanly is dropped all the same."""
    try:
        if consumer is not None:
            consumer.close()
    except Exception:
        pass


class BrokerUnavailable(RuntimeError):
    """The broker could not be reached; the message says where and why."""


class OffsetReader:
    """Metadata and probe consumers, kept open across batches to avoid reconnecting each time."""

    def __init__(self, settings: KafkaSettings, connect_timeout_s: float = 10.0) -> None:
        from kafka import KafkaConsumer
        from kafka.errors import KafkaError

        self.settings = settings
        self.probe = None
        self.record_probe = None  # consumer of records_at, made on first use
        self.record_wait_ms = RECORD_WAIT_MS[0]
        self.waiter = None  # long-polling consumer of wait_for_records, made on first use
        self._confirmed: dict[PartitionKey, int] = {}  # the last complete end-offset answer, per partition
        self.timeout_s = connect_timeout_s
        self.timeout_ms = int(connect_timeout_s * 1000)  # offset requests fail this fast, not after 30 s
        tls_problem = probe_tls(settings, connect_timeout_s)  # kafka-python would hang on a non-TLS listener
        if tls_problem:
            raise BrokerUnavailable(f"cannot reach Kafka at {settings.bootstrap_servers}: {tls_problem}")
        try:
            self.consumer = KafkaConsumer(
                **settings.client_kwargs(), enable_auto_commit=False, group_id=None,
                bootstrap_timeout_ms=int(connect_timeout_s * 1000),
            )
        except (KafkaError, OSError, ValueError) as exc:
            raise BrokerUnavailable(f"cannot reach Kafka at {settings.bootstrap_servers}: {exc}{failure_cause(settings)}") from None
        # time.monotonic() of the last metadata refresh. Bootstrapping just fetched metadata: what
        # it holds is as fresh as a refresh would be, and a topic it does not hold is looked up by
        # partitions_for_topic anyway
        self._metadata_at = time.monotonic()

    def partitions(self, topics: Iterable[str]) -> tuple[list[PartitionKey], list[str]]:
        """Partitions of the topics that exist, plus the names of topics that do not.

        Metadata is fetched afresh every time (unless the last refresh is less than
        ``METADATA_REUSE_S`` old): the client's cache would keep a deleted topic's partitions (or
        a recreated topic's old partition count) for minutes.
        """
        if time.monotonic() - self._metadata_at >= METADATA_REUSE_S:
            self._call(lambda: self.consumer.topics())  # refreshes the metadata cache
            self._metadata_at = time.monotonic()
        found: list[PartitionKey] = []
        missing: list[str] = []
        for topic in topics:
            ids = self._call(lambda: self.consumer.partitions_for_topic(topic))  # noqa: B023 (called at once, in this iteration)
            if not ids:
                missing.append(topic)
                continue
            found.extend((topic, p) for p in sorted(ids))
        return found, missing

    def bounds(self, partitions: list[PartitionKey]) -> tuple[dict[PartitionKey, int], dict[PartitionKey, int]]:
        """(earliest offsets, confirmed end offsets): the ends of two consecutive agreeing answers,
        the first of which may be this reader's previous answer (see the module's docstring)."""
        if not partitions:
            return {}, {}
        deadline = time.monotonic() + self.timeout_s
        previous: Optional[dict[PartitionKey, int]] = (
            dict(self._confirmed) if all(k in self._confirmed for k in partitions) else None)
        while True:
            begin, ends, complete = self._bounds_once(partitions, deadline)
            if complete and previous is not None and all(ends[k] >= previous[k] for k in partitions):
                return begin, ends
            if time.monotonic() > deadline:
                raise BrokerUnavailable(
                    f"Kafka at {self.settings.bootstrap_servers} did not confirm the end offsets of "
                    f"{len(partitions)} partitions within {self.timeout_s:.0f}s")
            previous = ends if complete else None

    def latest_ends(self, partitions: list[PartitionKey]) -> Optional[dict[PartitionKey, int]]:
        """End offsets from one round (no earliest offsets), for reporting the lag: None when the
        answer was incomplete. A complete answer also serves as the next look-up's first round."""
        if not partitions:
            return {}
        deadline = time.monotonic() + self.timeout_s
        ends, complete = self._ends_once(partitions, deadline)
        return ends if complete else None

    def _bounds_once(self, partitions: list[PartitionKey],
                     deadline: float) -> tuple[dict[PartitionKey, int], dict[PartitionKey, int], bool]:
        from kafka import TopicPartition

        tps = [TopicPartition(t, p) for t, p in partitions]
        begin = self._call(lambda: self.consumer.beginning_offsets(tps, timeout_ms=self.timeout_ms))
        ends, complete = self._ends_once(partitions, deadline)
        return {(tp.topic, tp.partition): o for tp, o in begin.items()}, ends, complete

    def _ends_once(self, partitions: list[PartitionKey], deadline: float) -> tuple[dict[PartitionKey, int], bool]:
        """One answer: the reported ends, confirmed by a fetch; remembered when complete."""
        from kafka import TopicPartition

        tps = [TopicPartition(t, p) for t, p in partitions]
        end = self._call(lambda: self.consumer.end_offsets(tps, timeout_ms=self.timeout_ms))
        reported = {(tp.topic, tp.partition): o for tp, o in end.items()}
        ends, complete = self._call(lambda: self._confirm_ends(reported, deadline))
        if complete:
            self._confirmed.update(ends)
        return ends, complete

    def _probe(self):  # type: ignore[no-untyped-def]
        if self.probe is None:
            self.probe = self._probe_consumer(fetch_max_wait_ms=10)
        return self.probe

    def _record_probe(self):  # type: ignore[no-untyped-def]
        if self.record_probe is None:
            self.record_probe = self._probe_consumer(fetch_max_wait_ms=self.record_wait_ms)
        return self.record_probe

    def _wait_longer_for_records(self) -> bool:
        """The broker answered ``records_at`` without the records it holds: the next fetches wait
        longer (``RECORD_WAIT_MS``) on a new consumer (kafka-python fixes a consumer's wait when
        it is made). False when the wait is already the longest."""
        _, factor, longest = RECORD_WAIT_MS
        if self.record_wait_ms >= longest:
            return False
        self.record_wait_ms = min(longest, self.record_wait_ms * factor)
        log.info("Kafka at %s answered a fetch without the records it holds; its fetches now wait up to %d ms "
                 "(a local broker holding many small record batches reads slowly)",
                 self.settings.bootstrap_servers, self.record_wait_ms)
        _close_quietly(self.record_probe)
        self.record_probe = None
        return True

    def _probe_consumer(self, fetch_max_wait_ms: int):  # type: ignore[no-untyped-def]
        from kafka import KafkaConsumer

        return KafkaConsumer(
            **self.settings.client_kwargs(), enable_auto_commit=False, group_id=None,
            # one record per poll: a look-up needs one record (or just the high watermark) per
            # partition, and kafka-python decodes up to max_poll_records of a fetched batch
            fetch_max_wait_ms=fetch_max_wait_ms, max_poll_records=1, check_crcs=False,
            max_partition_fetch_bytes=PROBE_FETCH_BYTES,
            auto_offset_reset="none",  # an offset the log no longer has is an answer, not a jump
            bootstrap_timeout_ms=self.timeout_ms,
        )

    def wait_for_records(self, ends: dict[PartitionKey, int], timeout_s: float,
                         stopping: Callable[[], bool] = lambda: False) -> bool:
        """Waits up to ``timeout_s`` for a record at or past ``ends`` (the confirmed ends of the
        last look-up) in any of their partitions; True as soon as one arrives.

        One long-polling fetch (the broker holds it up to ``fetch_max_wait_ms`` and answers as
        soon as there is data) instead of sleeping a poll interval: a caught-up ``--follow``
        plans its next batch within a round trip of new data. It only decides WHEN the next
        look-up happens, never what is read: on any error (a broker gone, a log that no longer
        reaches the offsets) it returns False at once, the caller waits out the interval, and
        the look-up that follows finds and handles the cause. New topics and partitions are
        found by that look-up too, at the latest after ``timeout_s``.
        """
        from kafka import KafkaConsumer, TopicPartition
        from kafka.errors import KafkaError

        deadline = time.monotonic() + timeout_s
        if not ends:
            return False
        try:
            if self.waiter is None:
                self.waiter = KafkaConsumer(
                    **self.settings.client_kwargs(), enable_auto_commit=False, group_id=None,
                    fetch_max_wait_ms=max(10, min(500, int(timeout_s * 1000))), max_poll_records=1,
                    max_partition_fetch_bytes=PROBE_FETCH_BYTES, check_crcs=False, auto_offset_reset="none",
                    bootstrap_timeout_ms=self.timeout_ms,
                )
            waiter = self.waiter
            waiter.unsubscribe()
            tps = {TopicPartition(t, p): o for (t, p), o in ends.items()}
            waiter.assign(list(tps))
            for tp, offset in tps.items():
                waiter.seek(tp, offset)
            while not stopping():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                polled = waiter.poll(timeout_ms=int(min(0.1, left) * 1000), max_records=1)
                if any(records for records in polled.values()):
                    return True
        except (KafkaError, OSError):
            return False  # the look-up after the interval finds out what is wrong
        return False

    def _assign_fresh(self, offsets: dict[PartitionKey, int], probe=None) -> dict:  # type: ignore[no-untyped-def, type-arg]
        """Assigns the partitions anew on ``probe`` (the end offsets' probe by default),
        forgetting high watermarks of earlier fetches, and seeks."""
        from kafka import TopicPartition

        probe = probe if probe is not None else self._probe()
        probe.unsubscribe()
        tps = {TopicPartition(t, p): (t, p) for t, p in offsets}
        probe.assign(list(tps))
        for tp, key in tps.items():
            probe.seek(tp, offsets[key])
        return tps

    def _confirm_ends(self, reported: dict[PartitionKey, int], deadline: float) -> tuple[dict[PartitionKey, int], bool]:
        """End offsets confirmed by a fetch at the reported end: its high watermark is the true
        end. Complete when every partition's fetch response arrived before the deadline."""
        from kafka.errors import OffsetOutOfRangeError

        probe = self._probe()
        tps = self._assign_fresh(reported)
        ends = dict(reported)
        waiting = set(tps)
        while waiting:
            try:
                polled = probe.poll(timeout_ms=CONFIRM_POLL_MS)
            except OffsetOutOfRangeError:  # the log shrank under us: not a consistent answer
                return ends, False
            for tp, records in polled.items():
                if records:
                    ends[tps[tp]] = max(ends[tps[tp]], records[-1].offset + 1)
            for tp in list(waiting):
                high = probe.highwater(tp)
                if high is not None:
                    ends[tps[tp]] = max(ends[tps[tp]], high)
                    waiting.discard(tp)
            _stop_fetching(probe, waiting)
            if waiting and time.monotonic() > deadline:
                return ends, False
        return ends, True

    def records_at(self, offsets: dict[PartitionKey, int], ends: dict[PartitionKey, int]) -> dict[PartitionKey, Optional[Fingerprint]]:
        """The fingerprint of the record at each offset, or None when the log holds none there.

        ``ends`` are confirmed end offsets: an offset at or past its end holds nothing (not
        fetched). Otherwise the first record a fetch from the offset returns decides: the record
        itself, or a later one (compaction, a transaction marker, another log). No answer within
        the timeout is a broker failure, never "no record": that would be taken as a changed log.
        """
        from kafka.errors import OffsetOutOfRangeError

        found: dict[PartitionKey, Optional[Fingerprint]] = {k: None for k, o in offsets.items() if o >= ends.get(k, 0)}
        wanted = {k: o for k, o in offsets.items() if k not in found}
        if not wanted:
            return found
        probe = self._record_probe()
        tps = self._call(partial(self._assign_fresh, wanted, probe))
        waiting = set(tps)
        deadline = time.monotonic() + self.timeout_s
        while waiting:
            try:
                polled = self._call(partial(probe.poll, timeout_ms=100))
            except OffsetOutOfRangeError as exc:  # below the log start now: deleted
                gone = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
                for tp in gone:
                    if tp in waiting:
                        found[tps[tp]] = None
                        waiting.discard(tp)
                _stop_fetching(probe, waiting)
                if not gone:
                    raise BrokerUnavailable(f"Kafka at {self.settings.bootstrap_servers} failed: {exc!r}") from None
                continue
            if not any(polled.values()) and self._answered_without_records(probe, tps, waiting, wanted) \
                    and self._wait_longer_for_records():
                still_wanted = {tps[tp]: wanted[tps[tp]] for tp in waiting}
                probe = self._record_probe()
                tps = self._call(partial(self._assign_fresh, still_wanted, probe))
                waiting = set(tps)
                continue
            for tp, records in polled.items():
                if tp in waiting and records:
                    first = records[0]
                    key = tps[tp]
                    found[key] = (fingerprint(first.offset, first.timestamp, first.key, first.value)
                                  if first.offset == wanted[key] else None)
                    waiting.discard(tp)
            for tp in list(waiting):
                high = probe.highwater(tp)
                if high is not None and high <= wanted[tps[tp]]:  # the log ends before the offset
                    found[tps[tp]] = None
                    waiting.discard(tp)
            _stop_fetching(probe, waiting)
            if waiting and time.monotonic() > deadline:
                where = ", ".join(f"{tps[tp][0]}[{tps[tp][1]}]@{wanted[tps[tp]]}" for tp in sorted(waiting))
                slow = (f" although its logs reach past them (it answered fetches waiting up to {self.record_wait_ms} ms "
                        "without records: a broker reading slowly)"
                        if self._answered_without_records(probe, tps, waiting, wanted) else "")
                raise BrokerUnavailable(f"Kafka at {self.settings.bootstrap_servers} did not return the records at "
                                        f"{where} within {self.timeout_s:.0f}s{slow}")
        return found

    @staticmethod
    def _answered_without_records(probe, tps: dict, waiting: set,  # type: ignore[no-untyped-def, type-arg]
                                  wanted: dict[PartitionKey, int]) -> bool:
        """Whether a waiting partition's last fetch response came without records although its
        high watermark lies past the wanted offset (a poll that returned nothing at all: records
        of a fetched batch would have come first)."""
        for tp in waiting:
            high = probe.highwater(tp)
            if high is not None and high > wanted[tps[tp]]:
                return True
        return False

    def _call(self, fn):  # type: ignore[no-untyped-def]
        from kafka.errors import KafkaError, OffsetOutOfRangeError

        try:
            return fn()
        except OffsetOutOfRangeError:
            raise
        except (KafkaError, OSError) as exc:
            raise BrokerUnavailable(f"Kafka at {self.settings.bootstrap_servers} failed: {exc!r}{failure_cause(self.settings)}") from None

    def close(self) -> None:
        for consumer in (self.consumer, self.probe, self.record_probe, self.waiter):
            _close_quietly(consumer)
