"""How a process of ours ends (the `cxj` command, the read-ahead worker): the exit handlers run
and the streams are flushed, then the process leaves without the interpreter's teardown.

Why: after a command that ran Beam, the teardown unloads Beam, pyarrow, gRPC and DuckDB module by
module: about 0.4 s after `cxj run --once` on an idle machine (docs/performance.md, "A process's
exit"), which every caller of `cxj` waits for and which nothing needs; the runner waits the same way
for its read-ahead worker at close (0.3-0.8 s). What the teardown would
still do that matters is done here first: the `atexit` handlers (logging's flush, the clean-up of
temporary directories) run, and stdout and stderr are flushed. Everything a command writes to a
database is committed and closed by the command itself; a connection left open holds nothing
that its write-ahead log does not hold. A non-daemon thread still running means work not done:
then the interpreter exits as usual, joining it first.
"""
from __future__ import annotations

import atexit
import os
import sys
import threading


def exit_quickly(code: int) -> None:
    """Ends the process with ``code`` (see the module docstring)."""
    if any(thread is not threading.main_thread() and not thread.daemon and thread.is_alive()
           for thread in threading.enumerate()):
        sys.exit(code)
    atexit._run_exitfuncs()  # what interpreter exit runs, in the same order (last registered first)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can be written to it
            pass
    os._exit(code)
