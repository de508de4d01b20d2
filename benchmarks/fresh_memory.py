"""How fast this machine hands out memory a process has not touched before.

Why: on a virtual machine whose host takes back the guest's free memory (most likely free page
reporting, here), the first touch of a page the guest's kernel had free can cost far more than
zeroing it: a fresh child process filled 2 GB in 0.98 s in one minute and in 6.8-6.9 s in
another, the same morning (docs/performance.md, "New memory on this machine, and DuckDB's memory
kept between batches (measured, not kept)"). Every benchmark here that allocates (the grown
store's batch above all) slows with it, without any change of code or of load average. So
`run_all.py` reads this before and after its parts and reports it beside the load average, to
tell a slow machine from a slow change.

  .venv/bin/python benchmarks/fresh_memory.py [MB]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass

DEFAULT_MB = 256

# the child fills MB of new memory, then reports the seconds and its own resident high-water mark
_CHILD = """
import json, sys, time
mb = int(sys.argv[1])
started = time.perf_counter()
block = b"\\x01" * (mb << 20)
seconds = time.perf_counter() - started
peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"seconds": seconds, "peak_mb": peak_kb / 1024}))
"""


@dataclass(frozen=True)
class FreshMemory:
    """One reading: ``mb`` of new memory filled in ``seconds`` by a child whose resident
    high-water mark reached ``peak_mb``."""

    mb: int
    seconds: float
    peak_mb: float

    @property
    def mb_per_s(self) -> float:
        return self.mb / max(self.seconds, 1e-9)


def fresh_memory(mb: int = DEFAULT_MB) -> FreshMemory:
    """Fills ``mb`` of memory in a new process (this one's heap may reuse pages it already
    has) and times it."""
    if mb <= 0:
        raise ValueError(f"mb must be positive, not {mb}")
    done = subprocess.run([sys.executable, "-c", _CHILD, str(mb)], capture_output=True, text=True, check=True)
    reading = json.loads(done.stdout)
    return FreshMemory(mb=mb, seconds=float(reading["seconds"]), peak_mb=float(reading["peak_mb"]))


def _size_mb(text: str) -> int:
    """``MB``: a positive whole number of megabytes."""
    try:
        mb = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of MB: {text!r}") from None
    if mb <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {mb}")
    return mb


def main() -> int:
    parser = argparse.ArgumentParser(description="Time how fast a fresh process fills new memory.")
    parser.add_argument("mb", nargs="?", type=_size_mb, default=DEFAULT_MB,
                        help=f"megabytes of new memory to fill (default {DEFAULT_MB})")
    mb = parser.parse_args().mb
    reading = fresh_memory(mb)
    print(f"{reading.mb} MB of new memory in {reading.seconds:.3f} s: {reading.mb_per_s:,.0f} MB/s "
          f"(the child's peak {reading.peak_mb:,.0f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
