"""Beam's per-bundle state sampler, with a period that does not make every bundle wait.

Every bundle the FnApiRunner processes starts a thread that samples which step runs
(``apache_beam.runners.worker.statesampler.StateSampler``, for Beam's msecs counters). The
thread sleeps between samples, its sleep growing from 2 ms by a fifth each time up to 200 ms,
and the end of a bundle joins it: a bundle that ran for a second or more waits up to 200 ms
(about 100 on average) for that sleep to end, with nothing to do. A micro-batch runs two small
pipelines of a few bundles each, so this idle wait was 0.85 of 30 s of a following run's cycles
at 2,000 events/s, and about 1.5 s of a 202k-event backlog (py-spy, docs/performance.md,
"Bundles that waited for Beam's state sampler").

``install`` makes the bundles' samplers sleep at most ``SAMPLING_PERIOD_MS``. The sampler's
work per wake-up is a lock and a few additions (without the GIL), so waking up every 10 ms
instead of every 200 costs nothing measurable; the msecs counters only get finer. Beam builds
the sampler through the module attribute (``statesampler.StateSampler(...)``), so a subclass
with another default period put there is the whole change; Beam's own class stays as it is
and ``uninstall`` puts it back.
"""
from __future__ import annotations

from typing import Any

from apache_beam.runners.worker import statesampler

# The longest sleep of a bundle's sampler thread, so the longest a bundle's end waits for it.
SAMPLING_PERIOD_MS = 10

_BEAMS_SAMPLER = statesampler.StateSampler


class QuickStopStateSampler(_BEAMS_SAMPLER):  # type: ignore[misc, valid-type]
    """Beam's StateSampler with ``SAMPLING_PERIOD_MS`` as its default period."""

    def __init__(self, prefix: str, counter_factory: Any, sampling_period_ms: int = SAMPLING_PERIOD_MS) -> None:
        super().__init__(prefix, counter_factory, sampling_period_ms)


def install() -> None:
    """Bundles started from now on use QuickStopStateSampler (idempotent)."""
    statesampler.StateSampler = QuickStopStateSampler


def uninstall() -> None:
    """Puts Beam's own sampler back (tests compare the two)."""
    statesampler.StateSampler = _BEAMS_SAMPLER
