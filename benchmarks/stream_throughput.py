"""Streaming-job throughput per worker on Beam's portable path, against the local engine.

Opt-in (not in CI, not in `make bench`): it takes minutes. In one run it
  1. starts a local broker and produces N simulated messages (pipelines/kafka/simulator.py, 2%
     redelivered copies, 1% malformed) to fresh topics;
  2. baseline: `cxj run --once` over those topics into a fresh DuckDB file (a subprocess);
  3. the portable path: Beam's job service and an external worker pool as separate processes,
     `cxj stream --stop-at-end --runner=PortableRunner --environment_type=EXTERNAL` from the same
     topics into a DuckLake whose catalog is a new database of a throwaway PostgreSQL cluster.
     Beam's local job service runs every job with ONE SDK worker: its FnApiRunner reads
     `--direct_num_workers` only when a pipeline object is run in-process (`run_pipeline`), never
     for a submitted job (`run_via_runner_api`), so this path cannot show scaling;
  4. for each worker count W (default 1 and 2): the same job on the in-process FnApiRunner with W
     SDK worker processes (`--direct_num_workers=W --direct_running_mode=multi_processing`), the
     runner handing each stage's bundles to the W processes; same PostgreSQL-catalog store.
The worker processes are counted from /proc (their command line), so a run that silently used
fewer workers shows it.
Every run is checked before its rate is reported: events + duplicates + dead letters = messages
sent, and the stream's journey count equals the local engine's. It prints messages/s overall and
per worker, wall and CPU seconds (CPU summed over the process tree: driver, job service, pool and
its workers, sampled from /proc), the ratio to the local engine, and the load average (the machine
is shared), and writes them as JSON.

  .venv/bin/python benchmarks/stream_throughput.py [--messages 20000] [--workers 1 2]

Needs PostgreSQL's server binaries (infra/install-postgres.sh), like the shared-lake tests.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator, Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.throughput import simulate_at_least  # noqa: E402
from pipelines.kafka.local_broker import free_port, start_broker, stop_broker  # noqa: E402
from pipelines.kafka.settings import KafkaSettings  # noqa: E402
from pipelines.kafka.simulator import send_simulated  # noqa: E402
from pipelines.kafka.topics import ensure_topics  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def _proc_stat(pid: int) -> Optional[tuple[int, float]]:
    """(parent pid, CPU seconds of the process itself) from /proc, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICKS


class TreeCpu:
    """CPU seconds of a set of processes and all their descendants, sampled every 0.25 s.

    Why sampling: the pool's worker processes are its children, not ours, so the kernel's
    RUSAGE_CHILDREN never sees them; the last sample of each pid is its CPU time."""

    def __init__(self, roots: list[int]) -> None:
        self.roots = set(roots)
        self.last: dict[int, float] = {}
        self.workers: set[int] = set()  # pids of SDK worker processes seen
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self) -> None:
        stats = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                stat = _proc_stat(int(entry))
                if stat:
                    stats[int(entry)] = stat
        tree, grew = set(self.roots), True
        while grew:
            grew = False
            for pid, (parent, _cpu) in stats.items():
                if parent in tree and pid not in tree:
                    tree.add(pid)
                    grew = True
        for pid in tree:
            if pid in stats:
                self.last[pid] = stats[pid][1]
                if pid not in self.workers and _is_sdk_worker(pid):
                    self.workers.add(pid)

    def _loop(self) -> None:
        while not self.stop.is_set():
            self._sample()
            self.stop.wait(0.25)

    def __enter__(self) -> "TreeCpu":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    @property
    def seconds(self) -> float:
        return sum(self.last.values())


def _is_sdk_worker(pid: int) -> bool:
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    arguments = command.split(b"\0")
    # a worker started through a shell shows twice (sh -c "python ..." and python): count the Python one
    return Path(arguments[0].decode(errors="replace")).name.startswith("python") and (
        b"sdk_worker_main" in command or b"SdkHarness" in command)


def wait_for_port(port: int, deadline_s: float = 60.0) -> None:
    import socket

    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"nothing listens on {port} after {deadline_s}s")


def topic_args(settings: KafkaSettings, topics: dict[str, str]) -> list[str]:
    return ["--bootstrap-servers", settings.bootstrap_servers, "--topic-tickets", topics["tickets"],
            "--topic-chats", topics["chats"], "--topic-surveys", topics["surveys"]]


def local_engine(work: Path, settings: KafkaSettings, topics: dict[str, str]) -> dict:
    import duckdb

    db = work / "local.duckdb"
    started = time.perf_counter()
    before = os.times()
    done = subprocess.run([sys.executable, "-m", "pipelines.cli.main", "run", "--once", "--quiet", "--db", str(db),
                           *topic_args(settings, topics)], cwd=work, capture_output=True, text=True)
    after = os.times()
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"cxj run --once failed: {done.stderr.strip().splitlines()[-1:]}")
    with duckdb.connect(str(db), read_only=True) as con:
        events, copies, dead, journeys = con.execute(
            "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM event_conflicts), "
            "(SELECT count(*) FROM dead_letters), (SELECT count(*) FROM journeys)").fetchone()
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "events": events, "journeys": journeys,
            "conflicts": copies, "dead_letters": dead}


def portable_services(work: Path, workers: int) -> Iterator[tuple[int, int, list[subprocess.Popen]]]:
    job_port, pool_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(ROOT)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # the pool starts `python`
    job = subprocess.Popen([sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main",
                            "--port", str(job_port)], cwd=work, env=env,
                           stdout=(work / "job.log").open("w"), stderr=subprocess.STDOUT)
    pool = subprocess.Popen([sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main",
                             "--service_port", str(pool_port)], cwd=work, env=env,
                            stdout=(work / "pool.log").open("w"), stderr=subprocess.STDOUT)
    try:
        wait_for_port(job_port)
        wait_for_port(pool_port)
        yield job_port, pool_port, [job, pool]
    finally:
        for process in (pool, job):
            process.terminate()
        for process in (pool, job):
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


def run_driver(command: list[str], cwd: Path, roots: list[int]) -> tuple[float, TreeCpu, str]:
    started = time.perf_counter()
    driver = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with TreeCpu([driver.pid, *roots]) as cpu:
        out, err = driver.communicate()
    wall = time.perf_counter() - started
    if driver.returncode != 0:
        raise RuntimeError(f"cxj stream failed ({driver.returncode}): {err.strip().splitlines()[-1:]}")
    return wall, cpu, out


def stream_run(work: Path, settings: KafkaSettings, topics: dict[str, str], catalog_url: str, workers: int,
               portable: bool) -> dict:
    from pipelines.storage.lake_target import parse_lake
    from pipelines.streaming.lake_store import LakeStore

    data = work / "lake-data"
    command = [sys.executable, "-m", "pipelines.cli.main", "stream", "--stop-at-end", "--store", catalog_url,
               "--store-data", str(data), *topic_args(settings, topics)]
    if portable:
        for job_port, pool_port, services in portable_services(work, workers):
            wall, cpu, out = run_driver(command + [
                "--runner=PortableRunner", f"--job_endpoint=localhost:{job_port}",
                "--environment_type=EXTERNAL", f"--environment_config=localhost:{pool_port}"], work, [s.pid for s in services])
    else:
        wall, cpu, out = run_driver(command + [f"--direct_num_workers={workers}", "--direct_running_mode=multi_processing"],
                                    work, [])
    with LakeStore("postgres:" + parse_lake(catalog_url).libpq, str(data), 72 * 3600) as store:
        counts = store.counts()
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu.seconds, 2), "sdk_worker_processes": len(cpu.workers),
            "events": counts["events"], "duplicates": counts["event_copies"], "dead_letters": counts["dead_letters"],
            "journeys": counts["journeys"], "driver_line": out.strip().splitlines()[-1:]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "stream_throughput.json")
    args = parser.parse_args()
    from tests.postgres_cluster import ThrowawayPostgres

    # a SIGTERM must still stop the broker and the PostgreSQL cluster (the finally below)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    work = Path(tempfile.mkdtemp(prefix="cxj-stream-bench-"))
    port = free_port()
    start_broker(port=port, partitions=3, topics=[], state_dir=work / "broker")
    settings = KafkaSettings(bootstrap_servers=f"127.0.0.1:{port}")
    topics = {"tickets": "sb.tickets", "chats": "sb.chats", "surveys": "sb.surveys"}
    cluster = None
    load_before = os.getloadavg()
    try:
        ensure_topics(settings, topics.values(), 3)
        messages = simulate_at_least(args.messages, args.seed)
        send_simulated(messages, settings, topics)
        sent = len(messages)
        print(f"sent {sent:,} messages to 3 topics x 3 partitions; load average {load_before[0]:.1f}", flush=True)
        local = local_engine(work, settings, topics)
        local_rate = sent / local["wall_s"]
        print(f"local engine  cxj run --once: {sent:,} messages in {local['wall_s']:.1f}s wall, {local['cpu_s']:.1f}s CPU "
              f"= {local_rate:,.0f} msg/s; {local['journeys']:,} journeys", flush=True)
        cluster = ThrowawayPostgres().start()
        runs = []
        for mode, workers in [("portable", 1)] + [("subprocess", w) for w in args.workers]:
            run_dir = work / f"stream-{mode}-{workers}"
            run_dir.mkdir()
            result = stream_run(run_dir, settings, topics, cluster.new_database(f"bench_{mode}_{workers}"), workers,
                                portable=mode == "portable")
            if result["sdk_worker_processes"] != workers:
                raise RuntimeError(f"{mode}: {result['sdk_worker_processes']} SDK worker processes ran, not {workers}")
            accounted = result["events"] + result["duplicates"] + result["dead_letters"]
            if accounted != sent or result["journeys"] != local["journeys"]:
                raise RuntimeError(f"{workers} workers: accounted {accounted} of {sent} messages, "
                                   f"{result['journeys']} journeys vs the local engine's {local['journeys']}")
            rate = sent / result["wall_s"]
            result.update(mode=mode, workers=workers, messages_per_s=round(rate, 1), per_worker_messages_per_s=round(rate / workers, 1),
                          ratio_to_local=round(rate / local_rate, 4), load_average_after=round(os.getloadavg()[0], 1))
            runs.append(result)
            print(f"stream  {mode:10s} {workers} worker(s): {sent:,} messages in {result['wall_s']:.1f}s wall, {result['cpu_s']:.1f}s CPU "
                  f"= {rate:,.0f} msg/s ({rate / workers:,.0f} per worker), {result['journeys']:,} journeys; "
                  f"{rate / local_rate:.3f} x the local engine; load average {result['load_average_after']}", flush=True)
        report = {"messages": sent, "local_engine": {**local, "messages_per_s": round(local_rate, 1)}, "stream": runs,
                  "load_average_before": [round(x, 1) for x in load_before], "cores": os.cpu_count()}
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2, default=str))
        print(f"written {args.output}")
    finally:
        if cluster is not None:
            cluster.stop()
        stop_broker(port=port, state_dir=work / "broker")
    return 0


if __name__ == "__main__":
    sys.exit(main())
