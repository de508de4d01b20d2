"""The unbounded mode of the streaming job's Kafka source, against the real local broker.

Why not a `cxj stream` run without `--stop-at-end`: no runner on this machine can run an unbounded
splittable DoFn (docs/deploy.md, "What was verified here"): Beam's local job service and the
in-process FnApiRunner schedule a stage's consumers only once the stage's output watermark reaches
the end of time, so behind an unbounded read nothing downstream ever runs; the bundle-based
DirectRunner ignores a DoFn's own `defer_remainder` (it fails the restriction as not done) and
its streaming overrides leave the SDF's GroupByKey unreplaced; Prism, Flink and Spark need a binary
or a jar downloaded at submission. So these tests drive the source the way a streaming runner
does, with the runner's own restriction tracker wrapper (`ThreadsafeRestrictionTracker`, whose
`deferred_status()` is what a runner reads after each call): call `process` on a partition's
restriction, take the residual it hands back when caught up, call again on that residual later.
Events arrive in waves while this goes on; after each wave, the records read are landed in the
store through the job's real graph (`build_from_records`) and checked: every message accounted
for, journeys equal to the pure functions on the set of events, nothing read twice, nothing
skipped. A restart is a new reader instance resuming from the checkpointed residuals, or (no
checkpoint) from the store's resume offsets.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.runners.sdf_utils import ThreadsafeRestrictionTracker

from pipelines.kafka.settings import KafkaSettings
from pipelines.streaming.kafka_source import UNBOUNDED_STOP, PartitionSpec, SourceOptions, _ReadPartition, plan_partitions
from pipelines.streaming.lake_store import LakeStore
from tests.support import new_topics, send, send_events
from tests.test_streaming import TOPICS as TEST_TOPICS
from tests.test_streaming import accounting, as_comparable, expected_from_set, golden_records, run_stream, stored_journeys

Record = tuple[str, int, int, bytes]  # (topic, partition, offset, value) as the test pipeline takes them


class RunnerLoop:
    """What a streaming runner does with one source instance: per partition, call `process` on the
    current restriction, keep the residual the DoFn defers, call again on it later. Holds the
    runner's checkpoint: each partition's residual restriction and watermark estimator."""

    def __init__(self, specs: list[PartitionSpec], options: SourceOptions) -> None:
        self.reader = _ReadPartition(options)
        self.reader.setup()
        self.specs = specs
        self.residuals = {(s.topic, s.partition): OffsetRange(s.start, s.stop) for s in specs}
        self.estimators = {(s.topic, s.partition): ManualWatermarkEstimator(None) for s in specs}
        self.calls_caught_up = 0

    def step(self, spec: PartitionSpec) -> list[tuple]:
        key = (spec.topic, spec.partition)
        tracker = ThreadsafeRestrictionTracker(OffsetRestrictionTracker(self.residuals[key]))
        out = [tv.value for tv in self.reader.process(spec, tracker, self.estimators[key])]
        deferred = tracker.deferred_status()
        assert deferred is not None, f"{key}: an unbounded read returned without deferring the rest of its range"
        residual, _delay = deferred
        # the residual starts right after the last record handed out: nothing skipped, nothing twice
        expected_start = out[-1][2] + 1 if out else self.residuals[key].start
        assert (residual.start, residual.stop) == (expected_start, UNBOUNDED_STOP), (key, residual, expected_start)
        self.residuals[key] = residual
        self.calls_caught_up += not out
        return out

    def read_until(self, total: int, seen: list[tuple], deadline_s: float = 60.0) -> None:
        """Steps every partition until `seen` holds `total` records (poll with a deadline)."""
        deadline = time.monotonic() + deadline_s
        while len(seen) < total:
            assert time.monotonic() < deadline, f"read {len(seen)} of {total} records in {deadline_s}s"
            for spec in self.specs:
                seen.extend(self.step(spec))

    def watermark_s(self, spec: PartitionSpec) -> float:
        current = self.estimators[(spec.topic, spec.partition)].current_watermark()
        return current.micros / 1e6 if current is not None else 0.0

    def close(self) -> None:
        self.reader.teardown()


def as_test_records(read: list[tuple], topics: dict[str, str]) -> list[Record]:
    """SourceRecords from the real topics, renamed to the test graph's topic names."""
    rename = {topic: TEST_TOPICS[stream] for stream, topic in topics.items()}
    return [(rename[t], p, o, v) for (t, p, o, _ts, v, _wm) in read]


def check_store(tmp: Path, landed: list[Record], sent: int) -> None:
    catalog, data = f"sqlite:{tmp / 'catalog.sqlite'}", str(tmp / "data")
    events, copies, dead = accounting(catalog, data)
    assert events + copies + dead == sent, (events, copies, dead, sent)
    expected, winners, losers, dead_expected = expected_from_set(landed)
    assert (events, copies, dead) == (winners, losers, dead_expected)
    assert as_comparable(stored_journeys(catalog, data)) == as_comparable(expected)


def read_and_land(loop: RunnerLoop, read: list[tuple], sent: int, tmp: Path, topics: dict[str, str]) -> None:
    """A restarted reader: reads until ``sent`` records in all, then stops (the job is cancelled);
    what it read goes through the real graph, and the store must account for everything so far."""
    before = len(read)
    try:
        loop.read_until(sent, read)
    finally:
        loop.close()
    run_stream(tmp, as_test_records(read[before:], topics))
    check_store(tmp, as_test_records(read, topics), sent)


def test_unbounded_reads_wave_after_wave_and_lands_every_message(broker: KafkaSettings, tmp_path: Path) -> None:
    topics = new_topics(broker)
    docs = [json.loads(v) for *_, v in golden_records()][:150]
    specs = plan_partitions(broker, list(topics.values()), "earliest", stop_at_end=False)
    assert specs and all(s.stop == UNBOUNDED_STOP for s in specs)
    loop = RunnerLoop(specs, SourceOptions(broker, poll_interval_s=0.2, idle_after_s=60.0))
    read: list[tuple] = []
    sent = 0
    try:
        loop.read_until(0, read)
        for spec in specs:  # caught up on empty topics: each call defers the whole range
            assert loop.step(spec) == []
        waves = [
            lambda: send_events(broker, topics, docs[:50]),
            lambda: send_events(broker, topics, docs[50:100]) + send_events(broker, topics, docs[:100:7]),  # + copies
            lambda: send_events(broker, topics, docs[100:]) + send(broker, topics, [("chats", b"k", b"{broken")]),
        ]
        for wave in waves:
            sent += wave()
            before = len(read)
            loop.read_until(sent, read)
            assert len(read) == sent  # nothing more than was sent arrived
            run_stream(tmp_path, as_test_records(read[before:], topics))  # this wave, through the real graph
            check_store(tmp_path, as_test_records(read, topics), sent)
        coordinates = [(t, p, o) for (t, p, o, *_rest) in read]
        assert len(set(coordinates)) == len(coordinates) == sent
        assert loop.calls_caught_up >= len(specs)
    finally:
        loop.close()


def test_a_restart_resumes_from_the_checkpoint_or_the_store_without_loss_or_doubles(broker: KafkaSettings,
                                                                                   tmp_path: Path) -> None:
    topics = new_topics(broker)
    docs = [json.loads(v) for *_, v in golden_records()][:120]
    options = SourceOptions(broker, poll_interval_s=0.2, idle_after_s=60.0)
    specs = plan_partitions(broker, list(topics.values()), "earliest", stop_at_end=False)
    first = RunnerLoop(specs, options)
    read: list[tuple] = []
    sent = send_events(broker, topics, docs[:40])
    try:
        first.read_until(sent, read)
        checkpoint = dict(first.residuals)
    finally:
        first.close()  # the job stops (a cancelled job, a lost worker)
    run_stream(tmp_path, as_test_records(read, topics))
    check_store(tmp_path, as_test_records(read, topics), sent)

    # events keep arriving while it is down; a restart from the runner's checkpoint reads only them
    sent += send_events(broker, topics, docs[40:80])
    restarted = RunnerLoop([PartitionSpec(s.topic, s.partition, checkpoint[(s.topic, s.partition)].start) for s in specs],
                           options)
    read_and_land(restarted, read, sent, tmp_path, topics)

    # a restart without checkpoint: `--start-from store` offsets, then more events
    sent += send_events(broker, topics, docs[80:]) + send_events(broker, topics, docs[::11])
    with LakeStore(f"sqlite:{tmp_path / 'catalog.sqlite'}", str(tmp_path / "data"), 72 * 3600) as store:
        resume = store.resume_offsets()
    # the store names partitions by the test graph's topic names; map back to the real ones
    real = {TEST_TOPICS[stream]: topic for stream, topic in topics.items()}
    resume = {(real[t], p): o for (t, p), o in resume.items()}
    from_store = RunnerLoop(plan_partitions(broker, list(topics.values()), resume, stop_at_end=False), options)
    read_and_land(from_store, read, sent, tmp_path, topics)
    coordinates = [(t, p, o) for (t, p, o, *_rest) in read]
    assert len(set(coordinates)) == len(coordinates) == sent


def test_an_idle_partition_moves_its_watermark_to_wall_clock_time(broker: KafkaSettings) -> None:
    topics = new_topics(broker)
    docs = [json.loads(v) for *_, v in golden_records()][:30]  # events from the scenarios' past
    sent = send_events(broker, topics, docs)
    specs = plan_partitions(broker, list(topics.values()), "earliest", stop_at_end=False)
    loop = RunnerLoop(specs, SourceOptions(broker, timestamp_policy="event", poll_interval_s=0.2, idle_after_s=1.0))
    read: list[tuple] = []
    try:
        loop.read_until(sent, read)
        newest_event_s = max(json_time_s(v) for (*_x, v, _wm) in read)
        busy = [s for s in specs if any(r[0] == s.topic and r[1] == s.partition for r in read)]
        assert busy
        for spec in busy:  # right after reading: the watermark follows event time, far behind the clock
            assert loop.watermark_s(spec) <= newest_event_s < time.time() - 86_400
        deadline = time.monotonic() + 30
        while not all(loop.watermark_s(s) >= time.time() - 60 for s in specs):
            assert time.monotonic() < deadline, [loop.watermark_s(s) for s in specs]
            for spec in specs:
                assert loop.step(spec) == []  # idle: nothing new, the range deferred again
        assert loop.calls_caught_up >= len(specs)
    finally:
        loop.close()


def json_time_s(value: bytes) -> float:
    from transforms.parse import parse_timestamp_us

    return parse_timestamp_us(json.loads(value)["occurred_at"]) / 1e6
