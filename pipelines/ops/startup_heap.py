"""Objects a process made while it started stay out of Python's full garbage collections.

Why: a run's process holds a few hundred thousand objects from its start-up (the modules and
classes of Beam, pyarrow, DuckDB and the Kafka clients, and the run's set-up) that live as long
as it does. Python's full collections walk every tracked object each time, these included: over
a 202k-event backlog, the run's eight full collections took 0.57 s of its process's time, and 0.06
s with these objects frozen (docs/performance.md, "Start-up objects frozen"). Only objects alive
at the call are frozen, after a collection that frees what is already garbage. A frozen object
dropped later is still freed by its reference count; only one inside a reference cycle is kept
until the process ends. So the freeze happens once per process: a later call (a test process
runs many commands) would freeze the objects of the work done since, and keep their cycles.
"""
from __future__ import annotations

import gc

_frozen_once = False


def freeze_startup_objects() -> bool:
    """Collects what is garbage now, then moves every object left to Python's permanent
    generation (``gc.freeze``), which collections skip. Only the first call in a process does
    anything; returns whether this one did."""
    global _frozen_once
    if _frozen_once:
        return False
    _frozen_once = True
    gc.collect()
    gc.freeze()
    return True
