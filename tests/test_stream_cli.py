"""`cxj stream` refuses what cannot work before starting anything, in one line each.

Real subprocesses of `cxj`; the job-endpoint cases use a port with nothing behind it and a
socket that accepts connections but never answers (a hung job server), and must end within the
timeout given, not after gRPC's minutes of retries.
"""
from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import free_port

CXJ = [sys.executable, "-m", "pipelines.cli.main", "stream"]


def cxj_stream(*args: str, cwd: Path, timeout: float = 120) -> tuple[int, str, float]:
    started = time.monotonic()
    done = subprocess.run([*CXJ, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    lines = [line for line in done.stderr.splitlines() if line.startswith("cxj stream")]
    return done.returncode, "\n".join(lines), time.monotonic() - started


@pytest.mark.parametrize("args, fragment", [
    (["--runner=PrismRunner"], "is not supported by cxj stream"),
    (["--runner=KafkaStreamsRunner"], "is not supported by cxj stream"),
    (["--runner=FlinkRunner"], "downloads its job-server jar"),
    (["--runner=SparkRunner", "--spark_job_server_jar=/nonexistent.jar"], "downloads its job-server jar"),
    (["--runner=PortableRunner"], "PortableRunner needs --job_endpoint"),
    (["--runner=PortableRunner", "--job_endpoint=localhost:1", "--environment_type=EXTERNAL"], "needs --environment_config"),
    (["--runner=DataflowRunner", "--project=p"], "DataflowRunner needs --region --temp_location"),
    ([], "runs cxj stream only in the bounded mode"),  # the in-process runner, unbounded
    (["--stop-at-end", "--setup_file=/nonexistent/setup.py"], "--setup_file /nonexistent/setup.py: no such file"),
    (["--stop-at-end", "--runner=NoSuchRunner"], "unknown Beam runner"),
    (["--stop-at-end", "--stop_at_end"], "did you mean --stop-at-end"),
    (["--stop-at-end", "--no_such_beam_option=1"], "neither cxj nor Apache Beam knows it"),
])
def test_unusable_runner_options_are_refused_in_one_line(tmp_path: Path, args: list[str], fragment: str) -> None:
    code, message, _ = cxj_stream(*args, "--store", str(tmp_path / "cat.sqlite"), cwd=tmp_path)
    assert code == 2, message
    assert fragment in message and len(message.splitlines()) == 1, message
    assert not (tmp_path / "cat.sqlite").exists(), "the store was created before the options were checked"


def test_a_job_endpoint_with_nothing_behind_it_times_out_in_one_line(tmp_path: Path) -> None:
    port = free_port()
    code, message, seconds = cxj_stream("--runner=PortableRunner", f"--job_endpoint=localhost:{port}",
                                        "--job-endpoint-timeout", "2s", "--store", str(tmp_path / "cat.sqlite"), cwd=tmp_path)
    assert code == 4, message
    assert message == (f"cxj stream: error: job endpoint localhost:{port} did not answer within 2s "
                       "(is the job server running? --job-endpoint-timeout)")
    assert seconds < 60


def test_a_job_endpoint_that_accepts_but_never_answers_times_out(tmp_path: Path) -> None:
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(16)  # accepts at the TCP level, never speaks HTTP/2
        port = hung.getsockname()[1]
        code, message, seconds = cxj_stream("--runner=PortableRunner", f"--job_endpoint=127.0.0.1:{port}",
                                            "--job-endpoint-timeout", "3s", "--store", str(tmp_path / "cat.sqlite"), cwd=tmp_path)
    assert code == 4, message
    assert f"job endpoint 127.0.0.1:{port} did not answer within 3s" in message
    assert len(message.splitlines()) == 1
    assert seconds < 60
