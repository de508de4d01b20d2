"""The second process: the next batch's ingest while this batch assembles and lands, and a
share of this batch's assembly.

Why: while a backlog is read, a cycle is the ingest stage (Kafka decoding, parsing, validation)
followed by assembly and the landing, each a core's worth of Python work; one after the other
they leave the machine's second core idle. The next batch's offset ranges are known as soon as
this batch's reads are (they start where those reads stopped), so its ingest can start at once.

What is read ahead is only a proposal (docs/performance.md, "Reading the next batch ahead"): the
next plan adopts it only if it is still a valid plan, i.e. every range starts at the offset
landed by then and ends within the confirmed end offsets; the staged files are then used exactly
as if that batch had ingested them itself (same stage, same ranges, same checks of its read
manifests). Anything else (the worker failed or died, a log changed, a batch failed and is being
split) discards it, and the batch ingests as if nothing had been read ahead. Nothing is landed
or committed here.

A share of the assembly (docs/performance.md, "Assembling on both cores"): the history the
store exports is partitioned by customer, and each partition is assembled on its own. While a
large batch assembles, the worker takes some partitions and this process the others; the worker
writes its partitions' files into the batch's own staging directory, under the same names the
stage would give them here. If the worker fails or dies, this process assembles those partitions
itself, overwriting whatever the worker left of them; so the files landed are the same either way.

The worker is `python -m pipelines.local.ingest_ahead`, not a multiprocessing child: spawning
re-imports the parent's main script, which would run a script without a ``__main__`` guard (a
benchmark, a notebook's runner) a second time.
"""
from __future__ import annotations

import logging
import os
import pickle
import select
import shutil
import signal
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import IO, Any, Optional

from pipelines.kafka.read import OffsetRange
from pipelines.ops.quick_exit import exit_quickly

ARROW_POOL_VARIABLE = "ARROW_DEFAULT_MEMORY_POOL"  # read by pyarrow when it starts
WORKER_ARROW_POOL = "system"

log = logging.getLogger("cxj.run")

# CXJ_INGEST_AHEAD=0 switches reading ahead off, =1 on; unset, it is on where this process may
# use two cores or more (on one core the two processes would only take turns). Results are the
# same either way.
ENV = "CXJ_INGEST_AHEAD"

Outcome = tuple[str, Any]  # ("ok", stage seconds) | ("error", first line of the failure)

# An outcome's length, before its pickle on the worker's stdout.
_FRAME = struct.Struct(">Q")

# A job's stage (the "stage" key of the job sent to the worker): the worker runs
# pipelines.local.batch_stages' run_ingest or run_assemble with the job's other keys.
INGEST = "ingest"
ASSEMBLE = "assemble"


def split_partitions(history_files: list[str], sizes: dict[str, int]) -> tuple[list[str], list[str]]:
    """Two shares of the history files with about the same bytes each (assembly's work grows
    with a partition's events); the files of one partition (its directory) stay together, since
    a partition's outputs are named after it. Largest partitions first, each to the lighter
    share."""
    partitions: dict[str, list[str]] = {}
    for path in history_files:
        partitions.setdefault(str(PurePath(path).parent), []).append(path)
    shares: tuple[list[str], list[str]] = ([], [])
    weights = [0, 0]
    for _, files in sorted(partitions.items(), key=lambda item: (-sum(sizes.get(f, 0) for f in item[1]), item[0])):
        lighter = 0 if weights[0] <= weights[1] else 1
        shares[lighter].extend(files)
        weights[lighter] += sum(sizes.get(f, 0) for f in files)
    return shares


def enabled() -> bool:
    setting = os.environ.get(ENV, "").strip().lower()
    if setting:
        return setting not in {"0", "false", "off", "no"}
    return len(os.sched_getaffinity(0)) >= 2


@dataclass(frozen=True)
class ReadAhead:
    """Staged ingest output of the ranges taken, and the stage's seconds in the worker."""

    staging: Path
    seconds: float


class IngestAhead:
    """One worker process (started on first use), at most one ingest and one assembly share in
    flight. The worker runs its jobs in the order sent, so an assembly share sent before an
    ingest is finished first."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._process: Optional[subprocess.Popen[bytes]] = None
        self._ranges: Optional[tuple[OffsetRange, ...]] = None
        self._staging: Optional[Path] = None
        self._assembling = False  # an assembly share was sent and its outcome not read yet
        self._inbox = bytearray()  # what the worker wrote that is not read as an outcome yet
        self._jobs = 0

    @property
    def proposal(self) -> Optional[list[OffsetRange]]:
        """The ranges being read ahead, if any: what the next plan may adopt."""
        return list(self._ranges) if self._ranges is not None else None

    @property
    def warm(self) -> bool:
        """Whether the worker is running: reading ahead then costs no start-up."""
        return self._process is not None and self._process.poll() is None

    @property
    def busy(self) -> bool:
        """Whether the worker works on the other core now: an assembly share is unanswered, or
        an ingest was sent whose outcome (a job's last write) has not begun to arrive."""
        if self._assembling:
            return True
        process = self._process
        if self._ranges is None or process is None or process.stdout is None or self._inbox:
            return False
        ready, _, _ = select.select([process.stdout.fileno()], [], [], 0)
        return not ready

    def warm_up(self) -> None:
        """Starts the worker now, without a job: its start-up (Python, Beam and the project's
        imports, 1-2 s) then overlaps this process's first ingest, and the first batch's assembly
        can already be shared."""
        if not self.warm:
            self._spawn()

    def start(self, ranges: list[OffsetRange], **stage: Any) -> None:
        """Starts ingesting ``ranges`` (run_ingest's other arguments in ``stage``)."""
        self.discard()
        self.warm_up()
        assert self._process is not None and self._process.stdin is not None
        self._jobs += 1
        staging = self.root / f"ahead-{os.getpid()}-{self._jobs}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            pickle.dump({"stage": INGEST, "ranges": list(ranges), "staging": staging, **stage}, self._process.stdin)
            self._process.stdin.flush()
        except OSError:  # the worker is gone: this batch is simply not read ahead
            shutil.rmtree(staging, ignore_errors=True)
            self._stop_worker()
            return
        self._ranges, self._staging = tuple(ranges), staging

    def take(self, ranges: list[OffsetRange]) -> Optional[ReadAhead]:
        """The staged output if exactly ``ranges`` were read ahead and the stage succeeded
        (waits for it to finish); else None, and whatever was read ahead is discarded."""
        if self._assembling:
            self.assembled()  # the worker answers in order: an unread share's outcome comes first
        if self._ranges is None or tuple(ranges) != self._ranges:
            self.discard()
            return None
        staging, read = self._staging, self._ranges
        assert staging is not None
        waited = time.perf_counter()
        outcome = self._wait()
        self._ranges, self._staging = None, None
        log.debug("read ahead: waited %.2fs for the ingest of %d records (%s)", time.perf_counter() - waited,
                  sum(r.size for r in read), "ok" if outcome and outcome[0] == "ok"
                  else f"failed: {outcome[1] if outcome else 'the worker died'}; the batch ingests itself")
        if outcome is None or outcome[0] != "ok":
            shutil.rmtree(staging, ignore_errors=True)
            if outcome is None:
                self._stop_worker()
            return None
        return ReadAhead(staging, float(outcome[1]))

    def assemble_share(self, history_files: list[str], **stage: Any) -> bool:
        """Sends the worker ``history_files`` to assemble (run_assemble's other arguments in
        ``stage``, the batch's staging dir among them). False if the worker is busy with an
        ingest or could not take the job: the caller then assembles those files itself."""
        if self._ranges is not None or self._assembling:
            return False
        self.warm_up()
        assert self._process is not None and self._process.stdin is not None
        try:
            pickle.dump({"stage": ASSEMBLE, "history_files": list(history_files), **stage}, self._process.stdin)
            self._process.stdin.flush()
        except OSError:
            self._stop_worker()
            return False
        self._assembling = True
        return True

    def assembled(self) -> bool:
        """Waits for the share sent by ``assemble_share``: True if the worker assembled it, False
        if it failed or died (the caller assembles the share itself)."""
        if not self._assembling:
            return False
        self._assembling = False
        outcome = self._wait() if self._process is not None else None
        if outcome is None:
            self.discard()  # an ingest sent after the share died with the worker
            self._stop_worker()
            log.debug("assembly share: the worker died; this process assembles it")
            return False
        if outcome[0] != "ok":
            log.debug("assembly share failed in the worker (%s); this process assembles it", outcome[1])
            return False
        return True

    def discard(self) -> None:
        """Drops a job in flight: the worker is stopped (a Beam run cannot be cancelled) and
        started again on next use."""
        if self._ranges is None:
            return
        self._stop_worker()
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
        self._ranges, self._staging = None, None

    def close(self) -> None:
        self.discard()
        self._stop_worker(grace_s=5.0)

    # ------------------------------------------------------------ the worker

    def _spawn(self) -> None:
        self._stop_worker()  # a worker that died: its pipes are closed, and a share sent to it is the caller's
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}  # what this process imports
        # Arrow's allocations in the worker from the C library's malloc instead of its default
        # mimalloc pool, which kept about 120 MB more of a 1M-event backlog's read-ahead
        # (docs/performance.md, "The worker's Arrow memory"); a pool named by the user stays
        env.setdefault(ARROW_POOL_VARIABLE, WORKER_ARROW_POOL)
        self._process = subprocess.Popen(
            [sys.executable, "-m", "pipelines.local.ingest_ahead"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            env=env)

    def _wait(self) -> Optional[Outcome]:
        """The worker's next outcome; None if it died first. Outcomes are length-prefixed and
        read from the pipe's file descriptor into our own buffer: two outcomes may arrive in one
        read, and a buffered reader would hold the second where ``select`` cannot see it."""
        process = self._process
        assert process is not None and process.stdout is not None
        fd = process.stdout.fileno()
        while True:
            if len(self._inbox) >= _FRAME.size:
                (size,) = _FRAME.unpack_from(self._inbox)
                if len(self._inbox) >= _FRAME.size + size:
                    data = bytes(self._inbox[_FRAME.size:_FRAME.size + size])
                    del self._inbox[:_FRAME.size + size]
                    try:
                        return pickle.loads(data)  # type: ignore[no-any-return]
                    except (pickle.UnpicklingError, EOFError, ValueError):
                        return None
            ready, _, _ = select.select([fd], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(fd, 1 << 16)
                except OSError:
                    return None
                if not chunk:
                    return None  # the worker died mid-job
                self._inbox += chunk
            elif process.poll() is not None:
                return None

    def _stop_worker(self, grace_s: float = 0.0) -> None:
        process, self._process = self._process, None
        self._assembling = False  # whatever was sent to it and not answered is lost with it
        self._inbox = bytearray()
        if process is None:
            return
        if process.stdin is not None:
            try:
                process.stdin.close()  # end of jobs: the worker exits after its current one
            except OSError:
                pass
        try:
            process.wait(grace_s if grace_s else 0.01)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def _serve(jobs: IO[bytes], results: IO[bytes]) -> None:
    """The worker: one stage per job, until its parent closes the pipe (or dies)."""
    from pipelines.local.batch_stages import run_assemble, run_ingest
    from pipelines.ops.failures import error_line
    from pipelines.ops.startup_heap import freeze_startup_objects

    freeze_startup_objects()  # Beam and pyarrow are imported: their objects live as long as the worker

    while True:
        try:
            job = pickle.load(jobs)
        except (EOFError, OSError):
            return
        try:
            run = run_assemble if job.pop("stage") == ASSEMBLE else run_ingest
            outcome: Outcome = ("ok", run(**job).seconds)
        except BaseException as exc:  # noqa: BLE001 - reported; the parent runs that stage itself
            outcome = ("error", error_line(exc, 300))
        data = pickle.dumps(outcome)
        results.write(_FRAME.pack(len(data)) + data)
        results.flush()


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it finishes its batch, then stops us
    logging.getLogger().setLevel(logging.ERROR)  # failures go back to the parent, which falls back
    # results go over the original stdout; anything a library prints goes to stderr instead
    results = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    _serve(sys.stdin.buffer, results)
    # The parent waits for this exit at its close. Every outcome is flushed and every job's files
    # are complete, so nothing is left for the interpreter's teardown to do but unload Beam,
    # pyarrow and the Kafka client, which took 0.3-0.8 s of that wait.
    exit_quickly(0)
