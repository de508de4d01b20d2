"""benchmarks/mappings.py: a real process's resident memory by kind of mapping.

Each test starts a Python child that allocates in one known way (glibc's malloc on its main
thread, on three other threads, or one large buffer), waits, and is sampled from outside, as the
memory benchmark samples `cxj run`. The same child without the allocation is the baseline."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import mappings  # noqa: E402

CHILD = r"""
import ctypes, sys, threading
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
kept = []

def fill(chunks):  # chunks of 1,000 bytes, written so that they are resident
    for _ in range(chunks):
        p = libc.malloc(1000)
        ctypes.memset(p, 1, 1000)
        kept.append(p)

how = sys.argv[1]
if how == "main_thread":
    fill(60_000)
elif how == "threads":
    workers = [threading.Thread(target=fill, args=(30_000,)) for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
elif how == "large":
    kept.append(b"\x01" * (300 << 20))
print("ready", flush=True)
sys.stdin.read()
"""


def _sample(how: str) -> tuple[dict[str, float], float]:
    """(resident MB by kind, the kernel's own resident total in MB) of a child allocating ``how``."""
    child = subprocess.Popen([sys.executable, "-c", CHILD, how], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        by_kind = mappings.resident_by_kind(child.pid)
        rollup = Path(f"/proc/{child.pid}/smaps_rollup").read_text()
        total_kb = next(int(line.split()[1]) for line in rollup.splitlines() if line.startswith("Rss:"))
    finally:
        child.communicate("")
    return by_kind, total_kb / 1024


@pytest.fixture(scope="module")
def baseline() -> dict[str, float]:
    return _sample("nothing")[0]


def test_the_kinds_add_up_to_the_kernels_resident_total() -> None:
    by_kind, total_mb = _sample("threads")
    assert set(by_kind) == set(mappings.KINDS)
    assert sum(by_kind.values()) == pytest.approx(total_mb, abs=1.0)


def test_mallocs_on_the_main_thread_count_as_the_c_heap(baseline: dict[str, float]) -> None:
    by_kind, _ = _sample("main_thread")
    assert by_kind["c_heap"] - baseline["c_heap"] >= 55  # 60,000 chunks of 1,000 bytes
    assert by_kind["c_thread_arenas"] - baseline["c_thread_arenas"] < 5


def test_mallocs_on_other_threads_count_as_their_arenas(baseline: dict[str, float]) -> None:
    by_kind, _ = _sample("threads")
    assert by_kind["c_thread_arenas"] - baseline["c_thread_arenas"] >= 80  # 3 x 30,000 chunks of 1,000 bytes
    assert by_kind["c_heap"] - baseline["c_heap"] < 5
    assert by_kind["anonymous_other"] - baseline["anonymous_other"] < 5


def test_one_large_buffer_counts_as_a_large_anonymous_region(baseline: dict[str, float]) -> None:
    by_kind, _ = _sample("large")
    assert by_kind["anonymous_large"] - baseline["anonymous_large"] >= 295  # 300 MB
    assert by_kind["c_heap"] - baseline["c_heap"] < 5


def test_a_mapping_is_an_arena_only_at_an_aligned_address_and_within_64_mb() -> None:
    arena = mappings.ARENA_BYTES
    assert mappings.kind_of(7 * arena, 7 * arena + (20 << 20), "") == "c_thread_arenas"
    assert mappings.kind_of(7 * arena + 4096, 7 * arena + (20 << 20), "") == "anonymous_other"
    assert mappings.kind_of(7 * arena, 7 * arena + 2 * arena, "") == "anonymous_large"
    assert mappings.kind_of(7 * arena, 7 * arena + (20 << 20), "/usr/lib/libc.so.6") == "files"
    assert mappings.kind_of(0x5555_0000_0000, 0x5555_0400_0000, "[heap]") == "c_heap"
