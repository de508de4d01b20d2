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

ROOT = Path(__file__).resolve().parent.parent
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
    (["--stop-at-end", f"--setup_file={ROOT / 'README.md'}"], "must name a setup.py or pyproject.toml"),
    (["--stop-at-end", f"--setup_file={ROOT / 'requirements.lock'}"], "must name a setup.py or pyproject.toml"),
    (["--runner=PortableRunner", "--job_endpoint=localhost:1", "--environment_type=LOOPBACK"],
     "LOOPBACK runs the workers inside this process"),
    (["--runner=DataflowRunner"], "DataflowRunner needs --project --region --temp_location"),
    # without a job endpoint nobody could take an option Beam does not know (with one: the job server is asked)
    (["--runner=PortableRunner", "--environment_type=EXTERNAL", "--flink_master=x:1", "--no_such=1"],
     "neither cxj nor Apache Beam knows it"),
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


def _describing_job_service(options: list[str]):  # type: ignore[no-untyped-def]
    """A gRPC JobService that only describes pipeline options, as a Flink job server does (no Flink
    job server runs here); everything else it leaves unimplemented."""
    from concurrent import futures

    import grpc
    from apache_beam.portability.api import beam_job_api_pb2, beam_job_api_pb2_grpc

    class Describing(beam_job_api_pb2_grpc.JobServiceServicer):
        def DescribePipelineOptions(self, request, context):  # noqa: N802 (gRPC's name)
            return beam_job_api_pb2.DescribePipelineOptionsResponse(options=[
                beam_job_api_pb2.PipelineOptionDescriptor(name=name, type=beam_job_api_pb2.PipelineOptionType.INTEGER)
                for name in options])

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    beam_job_api_pb2_grpc.add_JobServiceServicer_to_server(Describing(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def test_job_server_options_are_checked_against_the_job_server(tmp_path: Path) -> None:
    """Options Beam's Python SDK does not know (Flink's --checkpointing_interval) pass when the job
    server describes them, and are refused in one line when it does not: Beam's own local job
    service (a real process) describes none; a job server describing some takes exactly those."""
    from tests.test_streaming_rehearsal import wait_for_port

    job_port = free_port()
    job = subprocess.Popen([sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main",
                            "--port", str(job_port)], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server, described_port = _describing_job_service(["checkpointing_interval", "state_backend"])
    dead_kafka = f"127.0.0.1:{free_port()}"
    try:
        wait_for_port(job_port, job)
        code, message, _ = cxj_stream("--runner=PortableRunner", f"--job_endpoint=localhost:{job_port}",
                                      "--checkpointing_interval=60000", "--store", str(tmp_path / "a.sqlite"), cwd=tmp_path)
        assert code == 2, message
        assert message == (f"cxj stream: error: unknown Apache Beam option --checkpointing_interval: neither the Python "
                           f"SDK nor the job server at localhost:{job_port} takes it"), message
        assert not (tmp_path / "a.sqlite").exists()
        # a typo of a described option is refused, naming what the server takes
        code, message, _ = cxj_stream("--runner=PortableRunner", f"--job_endpoint=127.0.0.1:{described_port}",
                                      "--checkpointing_intervall=1", "--store", str(tmp_path / "b.sqlite"), cwd=tmp_path)
        assert code == 2 and "--checkpointing_intervall: neither the Python SDK nor the job server" in message, message
        assert "(it takes: checkpointing_interval, state_backend)" in message and len(message.splitlines()) == 1
        # described options pass the check: the next thing the job needs is Kafka, which is not there (exit 3)
        code, message, _ = cxj_stream("--runner=PortableRunner", f"--job_endpoint=127.0.0.1:{described_port}",
                                      "--checkpointing_interval", "60000", "--state_backend=rocksdb",
                                      "--bootstrap-servers", dead_kafka, "--store", str(tmp_path / "c.sqlite"), cwd=tmp_path)
        assert code == 3 and "cannot reach Kafka" in message, message
    finally:
        server.stop(0)
        job.terminate()
        job.wait(timeout=30)
