"""The bundles of a real Beam run use the quick-stop state sampler once it is installed, its
counters still count, and uninstall puts Beam's own sampler back. No broker needed."""
from __future__ import annotations

import threading
import time

import apache_beam as beam
from apache_beam.runners.worker import statesampler
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

import pipelines.local.batch_stages  # noqa: F401  (installs it, as every run does)
from pipelines.local import beam_sampler
from pipelines.local.beam_reuse import reusable_options


def _sampler_seen(_: int) -> tuple[str, int]:
    """Inside a bundle: the class and the period of the sampler tracking this thread."""
    tracker = statesampler.get_current_tracker()
    return type(tracker).__name__, tracker.sampling_period_ms


def _run_sampler_probe() -> None:
    with TestPipeline(options=reusable_options(())) as pipeline:
        seen = pipeline | beam.Create([1, 2, 3]) | beam.Map(_sampler_seen) | beam.Distinct()
        assert_that(seen, equal_to([("QuickStopStateSampler", beam_sampler.SAMPLING_PERIOD_MS)]))


def test_a_runs_bundles_use_the_quick_stop_sampler() -> None:
    assert statesampler.StateSampler is beam_sampler.QuickStopStateSampler
    _run_sampler_probe()


def test_the_quick_stop_sampler_still_samples_and_its_thread_ends_at_stop() -> None:
    """Its thread samples (the current state's time grows with the time that passed) and is
    gone once stop() returns: the shorter period changes how long a stop waits, not what the
    sampler does. (What the wait costs a run is measured by the benchmarks, not timed here.)"""
    sampler = beam_sampler.QuickStopStateSampler("probe", counter_factory=None)
    assert sampler.sampling_period_ms == beam_sampler.SAMPLING_PERIOD_MS
    threads_before = set(threading.enumerate())
    sampler.start()
    sampling_threads = set(threading.enumerate()) - threads_before
    assert len(sampling_threads) == 1
    time.sleep(0.5)
    sampler.stop()
    assert not sampling_threads.pop().is_alive()
    assert sampler.current_state().nsecs > 0.3e9  # the thread really sampled the half second


def test_uninstall_restores_beams_sampler() -> None:
    beam_sampler.uninstall()
    try:
        assert statesampler.StateSampler is beam_sampler._BEAMS_SAMPLER
        assert statesampler.StateSampler.__init__.__defaults__ == (statesampler.DEFAULT_SAMPLING_PERIOD_MS,)
    finally:
        beam_sampler.install()
    assert statesampler.StateSampler is beam_sampler.QuickStopStateSampler
