"""The start-up freeze: garbage is collected first, what lives is frozen, once per process."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_garbage_is_freed_what_lives_is_frozen_and_only_the_first_call_freezes():
    # in a fresh interpreter: this test process may have frozen its objects already
    script = textwrap.dedent("""
        import gc, weakref
        from pipelines.ops.startup_heap import freeze_startup_objects

        gc.disable()  # no automatic collection: only the call's own may free the garbage below

        class Node:
            pass

        garbage = Node(); garbage.me = garbage  # a cycle only a collection frees
        gone = weakref.ref(garbage)
        del garbage
        kept = [Node() for _ in range(1000)]
        before = gc.get_freeze_count()
        assert freeze_startup_objects() is True
        assert gone() is None, "garbage was frozen"
        frozen = gc.get_freeze_count()
        assert frozen >= before + 1000, (before, frozen)
        later = [Node() for _ in range(1000)]
        assert freeze_startup_objects() is False
        assert gc.get_freeze_count() == frozen, "a second call froze the objects made since"
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
