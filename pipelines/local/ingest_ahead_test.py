"""The second process's protocol and the assembly shares: the two shares split the history files by
whole partitions; outcomes are read in the order the jobs were sent."""
import array
import fcntl
import os
import pickle
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from pipelines.kafka.settings import KafkaSettings
from pipelines.local.ingest_ahead import _FRAME, ASSEMBLE, IngestAhead, split_partitions
from transforms.metrics_config import MetricsConfig
from transforms.parse import ParseLimits

# partition number -> sizes of its files (a partition usually has one file; more must stay together)
PARTITIONS = st.dictionaries(st.integers(0, 15), st.lists(st.integers(0, 10_000_000), min_size=1, max_size=3),
                             max_size=12)


def _files(partitions: dict[int, list[int]]) -> dict[str, int]:
    return {f"/staging/history/part={part}/data_{n}.parquet": size
            for part, sizes in partitions.items() for n, size in enumerate(sizes)}


@given(PARTITIONS)
def test_every_file_goes_to_one_share_with_the_rest_of_its_partition(partitions):
    sizes = _files(partitions)
    mine, theirs = split_partitions(sorted(sizes), sizes)
    assert sorted(mine + theirs) == sorted(sizes)
    assert not {f.rsplit("/", 1)[0] for f in mine} & {f.rsplit("/", 1)[0] for f in theirs}


@given(PARTITIONS)
def test_the_shares_differ_by_at_most_one_partition(partitions):
    """Greedy largest-first: the heavier share is at most the largest partition heavier."""
    sizes = _files(partitions)
    mine, theirs = split_partitions(sorted(sizes), sizes)
    weight = [sum(sizes[f] for f in share) for share in (mine, theirs)]
    largest = max((sum(s) for s in partitions.values()), default=0)
    assert abs(weight[0] - weight[1]) <= largest


def test_two_partitions_or_more_give_two_shares():
    sizes = _files({0: [500], 3: [400], 5: [300], 7: [200]})
    mine, theirs = split_partitions(sorted(sizes), sizes)
    assert [sum(sizes[f] for f in share) for share in (mine, theirs)] == [700, 700]


def test_one_partition_leaves_nothing_to_share():
    sizes = _files({4: [100, 200]})
    assert split_partitions(sorted(sizes), sizes) == (sorted(sizes), [])


def test_two_outcomes_that_arrive_together_are_both_read(tmp_path):
    """A share and the next batch's ingest are sent one after the other; when both outcomes are
    already in the pipe, reading the first must not hide the second (a buffered reader would
    hold it where ``select`` cannot see it, and the wait for the ingest would never end)."""
    ahead = IngestAhead(tmp_path)
    try:
        staging = tmp_path / "batch"
        staging.mkdir()
        assert ahead.assemble_share([], staging=staging, repeat_window_s=3600.0, beam_args=[],
                                    metrics=MetricsConfig())
        ahead.start([], settings=KafkaSettings(bootstrap_servers="127.0.0.1:9"), stream_of_topic={}, now_us=0,
                    beam_args=[], limits=ParseLimits(), read_timeout_s=5.0, budget_bytes=None)
        both = 2 * (8 + len(pickle.dumps(("ok", 1.0))))
        deadline = time.monotonic() + 120
        while _waiting_bytes(ahead) < both:  # both stages done, neither outcome read yet
            assert time.monotonic() < deadline, "the worker did not answer both jobs"
            time.sleep(0.05)
        assert ahead.assembled()
        taken: list = []
        reader = threading.Thread(target=lambda: taken.append(ahead.take([])), daemon=True)
        reader.start()
        reader.join(30)
        assert not reader.is_alive(), "the second outcome was in the pipe but never read"
        assert taken[0] is not None
    finally:
        ahead.close()


def test_the_worker_is_busy_from_a_job_until_its_outcome_arrives(tmp_path):
    """The store lands on one thread while ``busy``: it must hold while the worker works (here
    it still imports Beam when the job is sent) and end when the outcome is in the pipe, before
    anyone reads it; a share is busy until it is answered."""
    ahead = IngestAhead(tmp_path)
    try:
        assert not ahead.busy, "no worker, no job"
        ahead.start([], settings=KafkaSettings(bootstrap_servers="127.0.0.1:9"), stream_of_topic={}, now_us=0,
                    beam_args=[], limits=ParseLimits(), read_timeout_s=5.0, budget_bytes=None)
        assert ahead.busy
        deadline = time.monotonic() + 120
        while ahead.busy:
            assert time.monotonic() < deadline, "the worker never answered the ingest"
            time.sleep(0.05)
        assert _waiting_bytes(ahead) > 0, "not busy before the outcome arrived"
        assert ahead.take([]) is not None and not ahead.busy
        staging = tmp_path / "batch"
        staging.mkdir()
        assert ahead.assemble_share([], staging=staging, repeat_window_s=3600.0, beam_args=[],
                                    metrics=MetricsConfig())
        assert ahead.busy
        assert ahead.assembled() and not ahead.busy
    finally:
        ahead.close()


def _waiting_bytes(ahead: IngestAhead) -> int:
    """Bytes the worker wrote to its stdout pipe that nobody has read yet."""
    process = ahead._process
    assert process is not None and process.stdout is not None
    count = array.array("i", [0])
    fcntl.ioctl(process.stdout.fileno(), termios.FIONREAD, count)
    return count[0]


def test_the_worker_answers_every_job_before_it_exits_at_the_end_of_its_jobs(tmp_path):
    """The worker leaves without the interpreter's teardown (exit_quickly) once its jobs pipe closes:
    every outcome must still reach the parent, in order, and the exit must be a clean 0."""
    staging = tmp_path / "batch"
    staging.mkdir()
    jobs = [
        {"stage": ASSEMBLE, "history_files": [], "staging": staging, "repeat_window_s": 3600.0, "beam_args": [],
         "metrics": MetricsConfig()},
        {"stage": ASSEMBLE, "no_such_argument": True},  # fails in the worker: reported, not fatal
    ]
    worker = subprocess.Popen([sys.executable, "-m", "pipelines.local.ingest_ahead"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)})
    sent = b"".join(pickle.dumps(job) for job in jobs)
    out, err = worker.communicate(sent, timeout=120)  # closes the jobs pipe after the last job
    assert worker.returncode == 0, err.decode(errors="replace")
    outcomes = []
    while out:
        (size,) = _FRAME.unpack_from(out)
        outcomes.append(pickle.loads(out[_FRAME.size:_FRAME.size + size]))
        out = out[_FRAME.size + size:]
    assert [kind for kind, _ in outcomes] == ["ok", "error"], outcomes
    assert "no_such_argument" in outcomes[1][1]


def _worker_environment(ahead: IngestAhead) -> dict[str, str]:
    process = ahead._process
    assert process is not None
    raw = Path(f"/proc/{process.pid}/environ").read_bytes().split(b"\0")
    return dict(entry.decode().split("=", 1) for entry in raw if b"=" in entry)


def _started_worker(tmp_path) -> IngestAhead:
    ahead = IngestAhead(tmp_path)
    ahead.start([], settings=KafkaSettings(bootstrap_servers="127.0.0.1:9"), stream_of_topic={}, now_us=0,
                beam_args=[], limits=ParseLimits(), read_timeout_s=5.0, budget_bytes=None)
    return ahead


def test_the_worker_allocates_arrow_memory_with_malloc_unless_the_user_chose_a_pool(tmp_path, monkeypatch):
    """The worker's Arrow memory comes from the C library's malloc: Arrow's default pool kept
    about 120 MB more over a 1M-event backlog (docs/performance.md, "The worker's Arrow memory").
    Checked where it takes effect: the worker's own environment, and that the pinned pyarrow
    reads it (a renamed variable would silently bring the default pool back)."""
    monkeypatch.delenv("ARROW_DEFAULT_MEMORY_POOL", raising=False)
    ahead = _started_worker(tmp_path / "default")
    try:
        chosen = _worker_environment(ahead).get("ARROW_DEFAULT_MEMORY_POOL")
    finally:
        ahead.close()
    assert chosen == "system"
    backend = subprocess.run([sys.executable, "-c", "import pyarrow; print(pyarrow.default_memory_pool().backend_name)"],
                             env={**os.environ, "ARROW_DEFAULT_MEMORY_POOL": chosen}, capture_output=True, text=True,
                             check=True).stdout.strip()
    assert backend == "system"

    monkeypatch.setenv("ARROW_DEFAULT_MEMORY_POOL", "jemalloc")
    ahead = _started_worker(tmp_path / "chosen")
    try:
        assert _worker_environment(ahead).get("ARROW_DEFAULT_MEMORY_POOL") == "jemalloc"
    finally:
        ahead.close()
