"""A process's resident memory by kind of mapping, from ``/proc/<pid>/smaps`` (Linux).

Why: a peak resident size says how much, not whose. Over a long backlog the run's process
keeps DuckDB's blocks within DuckDB's memory limit, while glibc's malloc (its main heap and
the arenas of the threads that allocate from it) keeps growing slowly (docs/performance.md,
"Where the run's memory lives, by mapping"). The memory benchmark samples this every 0.2 s
(``run_all.MAPPINGS_EVERY_S``) so each call shows both apart.

The kinds, in MB:

- ``files``: file-backed mappings (shared libraries, mapped files);
- ``c_heap``: glibc's main heap (``[heap]``, grown with brk);
- ``c_thread_arenas``: glibc's other arenas. Each reserves 64 MB at an address aligned to
  64 MB and makes it readable as it grows, so its used part is an anonymous mapping that
  starts at such an address and is at most 64 MB long;
- ``anonymous_large``: other anonymous mappings over 64 MB (adjacent mappings the kernel merged:
  in the run's process, DuckDB's blocks);
- ``anonymous_other``: the rest (Python's object arenas, Arrow's and Beam's buffers, stacks).

    .venv/bin/python benchmarks/mappings.py PID   # one sample, as JSON
"""
from __future__ import annotations

import json
import re
import sys

KINDS = ("files", "c_heap", "c_thread_arenas", "anonymous_large", "anonymous_other")
ARENA_BYTES = 64 << 20  # glibc's HEAP_MAX_SIZE on 64-bit machines
_MAPPING = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) \S+ \S+ \S+ \S+\s*(.*)$")


def kind_of(start: int, end: int, name: str) -> str:
    """Which of ``KINDS`` the mapping from ``start`` to ``end`` named ``name`` counts under."""
    if name.startswith("/"):
        return "files"
    if name == "[heap]":
        return "c_heap"
    if name:  # [stack], [vdso], [anon:...] and the like
        return "anonymous_other"
    if start % ARENA_BYTES == 0 and end - start <= ARENA_BYTES:
        return "c_thread_arenas"
    return "anonymous_large" if end - start > ARENA_BYTES else "anonymous_other"


def resident_by_kind(pid: int) -> dict[str, float]:
    """Resident MB of process ``pid`` by kind (``KINDS``). Raises OSError once it has exited."""
    resident_kb = dict.fromkeys(KINDS, 0)
    kind = None
    with open(f"/proc/{pid}/smaps") as smaps:
        for line in smaps:
            mapping = _MAPPING.match(line)
            if mapping:
                kind = kind_of(int(mapping[1], 16), int(mapping[2], 16), mapping[3].strip())
            elif line.startswith("Rss:") and kind is not None:
                resident_kb[kind] += int(line.split()[1])
    return {k: round(kb / 1024, 1) for k, kb in resident_kb.items()}


if __name__ == "__main__":
    if len(sys.argv) != 2 or not sys.argv[1].isdigit():
        sys.exit("usage: mappings.py PID")
    print(json.dumps(resident_by_kind(int(sys.argv[1]))))
