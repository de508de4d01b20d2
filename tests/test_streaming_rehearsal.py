"""Rehearsal of a distributed run on this machine: Beam's portable path with the job service and
an external worker pool as separate processes, reading the real local broker, writing the store.

* the job service (`local_job_service_main`) and the worker pool (`worker_pool_main`) each run
  in their own empty temporary working directory; the driver (`cxj stream`) in a third;
* the workers import the project from their own copy of the packaged code (what the project
  wheel installs: pipelines/, transforms/, schemas/), put first on their PYTHONPATH, never from
  the driver's checkout; the test proves it by the bytecode the workers leave in that copy;
* the only directory they share is the store's (DuckLake catalog, its lock file and data/);
* the job runs in the bounded mode (`--stop-at-end`: the end offsets seen at start) so it ends;
* every message is accounted for: events + duplicates + dead letters = messages sent, and the
  stored journeys equal the pure functions' on the set of events.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from pipelines.kafka.settings import KafkaSettings
from tests.support import free_port, send, send_events
from tests.test_streaming import TOPICS as TEST_TOPICS
from tests.test_streaming import as_comparable, expected_from_set, golden_records, read_store, stored_journeys, stream_of

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pipelines", "transforms", "schemas")


def wait_for_port(port: int, process: subprocess.Popen, deadline_s: float = 60.0) -> None:
    import socket

    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"process exited with {process.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"nothing listens on {port} after {deadline_s}s")


def worker_site(target: Path) -> Path:
    """The packaged code alone, as the wheel (and infra/worker/Dockerfile) installs it."""
    for package in PACKAGES:
        shutil.copytree(ROOT / package, target / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*_test.py", "*.pyc"))
    return target


@pytest.fixture
def portable_services(tmp_path: Path) -> Iterator[dict]:
    job_dir, worker_dir = tmp_path / "job-service", tmp_path / "worker-pool"
    job_dir.mkdir()
    worker_dir.mkdir()
    site = worker_site(worker_dir / "site")
    job_port, pool_port = free_port(), free_port()
    # workers write bytecode into their copy of the code: the proof of where they imported it from
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE")}
    job = subprocess.Popen([sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main",
                            "--port", str(job_port)], cwd=job_dir, env=env,
                           stdout=(job_dir / "out.log").open("w"), stderr=subprocess.STDOUT)
    pool = subprocess.Popen([sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main",
                             "--service_port", str(pool_port)], cwd=worker_dir, env={**env, "PYTHONPATH": str(site),
                                                                  # the pool starts workers with `python` from PATH
                                                                  "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"},  # noqa: E501
                            stdout=(worker_dir / "out.log").open("w"), stderr=subprocess.STDOUT)
    try:
        wait_for_port(job_port, job)
        wait_for_port(pool_port, pool)
        yield {"job_port": job_port, "pool_port": pool_port, "site": site, "worker_dir": worker_dir, "job_dir": job_dir}
    finally:
        for process in (pool, job):
            process.terminate()
        for process in (pool, job):
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


def test_portable_rehearsal_accounts_for_every_message(broker: KafkaSettings, portable_services: dict, tmp_path: Path,
                                                       postgres) -> None:
    from pipelines.storage.lake_target import parse_lake
    from tests.support import new_topics

    topics = new_topics(broker)
    docs = [json.loads(v) for *_, v in golden_records()]
    sent = send_events(broker, topics, docs)
    sent += send_events(broker, topics, docs[::17])  # redelivered copies
    broken = [("tickets", b"k", b"{not json"), ("chats", b"k", b""), ("surveys", b"k", json.dumps({"schema_version": 7}).encode())]
    sent += send(broker, topics, broken)

    shared = tmp_path / "shared-store"
    lake_db = postgres.new_database("rehearsal")
    driver_dir = tmp_path / "driver"
    driver_dir.mkdir()
    started = time.perf_counter()
    command = [sys.executable, "-m", "pipelines.cli.main", "stream", "--stop-at-end",
               # the PostgreSQL-catalog store many writers share; its data folder is the one shared directory
               "--store", lake_db, "--store-data", str(shared / "data"),
               "--bootstrap-servers", broker.bootstrap_servers,
               "--topic-tickets", topics["tickets"], "--topic-chats", topics["chats"], "--topic-surveys", topics["surveys"],
               "--runner=PortableRunner", f"--job_endpoint=localhost:{portable_services['job_port']}",
               "--environment_type=EXTERNAL", f"--environment_config=localhost:{portable_services['pool_port']}"]
    done = subprocess.run(command, cwd=driver_dir, capture_output=True, text=True, timeout=600)
    wall_s = time.perf_counter() - started
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]

    catalog, data = "postgres:" + parse_lake(lake_db).libpq, str(shared / "data")
    events, copies, dead = read_store(catalog, data, """SELECT (SELECT count(*) FROM {lake}.events),
        (SELECT count(*) FROM {lake}.event_copies), (SELECT count(*) FROM {lake}.dead_letters)""")[0]
    assert events + copies + dead == sent, (events, copies, dead, sent)
    assert dead == len(broken)
    # the journeys are the pure functions' on the set of valid events
    fake = [(TEST_TOPICS[stream_of(d)], 0, i, json.dumps(d).encode()) for i, d in enumerate(docs)]
    expected, winners, _, _ = expected_from_set(fake)
    assert events == winners
    rows = stored_journeys(catalog, data)
    assert as_comparable(rows) == as_comparable(expected)
    # the workers ran the code of their own copy (bytecode written there), not the driver's checkout
    assert list((portable_services["site"] / "transforms").glob("__pycache__/customer_stream*.pyc"))
    assert list((portable_services["site"] / "pipelines" / "streaming").glob("__pycache__/lake_store*.pyc"))
    assert not any((driver_dir).iterdir()), "the driver wrote into its working directory"
    print(f"\nrehearsal: {sent} messages, {events} events, {copies} duplicates, {dead} dead letters, "
          f"{len(rows)} journeys, wall {wall_s:.1f}s ({sent / wall_s:.0f} msg/s with 1 worker pool)")
