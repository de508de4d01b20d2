"""Which runners `cxj stream` accepts, checked before anything is started.

Why up front: Beam's own failures here are slow or silent. FlinkRunner/SparkRunner download a
job-server jar from Maven at submission (offline: a long stack trace); PortableRunner without
`--job_endpoint` raises NotImplementedError; with an endpoint that does not answer it waits for
minutes. Each case is one line naming the fix, and a job endpoint (and an EXTERNAL worker pool)
must answer within `--job-endpoint-timeout`.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import socket
from dataclasses import dataclass
from typing import Optional, Sequence

from pipelines.config.beam_options import BeamOptionError, runner_path, split_unknown

IN_PROCESS = ("DirectRunner", "FnApiRunner", "SwitchingDirectRunner", "BundleBasedDirectRunner")
SUPPORTED = IN_PROCESS + ("PortableRunner", "FlinkRunner", "SparkRunner", "DataflowRunner")


class RunnerProblem(ValueError):
    """A runner or runner option `cxj stream` cannot use; the message is the one line shown."""


class EndpointUnreachable(RuntimeError):
    """The job endpoint or worker pool did not answer in time."""


@dataclass(frozen=True)
class RunnerPlan:
    name: str
    in_process: bool
    job_endpoint: Optional[str] = None
    worker_pool: Optional[str] = None
    job_server_options: tuple[str, ...] = ()  # unknown to the Python SDK: the job server must take them


def plan_runner(beam_args: Sequence[str], bounded: bool) -> RunnerPlan:
    """Checks the runner and its options; raises RunnerProblem with one line."""
    try:
        known, unknown = split_unknown(beam_args)
        path = runner_path(beam_args)
    except BeamOptionError as exc:
        raise RunnerProblem(str(exc)) from None
    name = path.rsplit(".", 1)[-1]
    # A job server adds options of its own (Flink's --checkpointing_interval, --state_backend, ...):
    # the Python SDK does not know them, the job server describes them. check_endpoints asks it.
    forwarded = name in ("PortableRunner", "FlinkRunner", "SparkRunner") and getattr(known, "job_endpoint", None)
    if unknown and not forwarded:
        raise RunnerProblem(f"unknown Apache Beam option {unknown[0]}"
                            + (" (options of a Flink or Spark job server are checked against it: start it yourself "
                               "and give --job_endpoint=HOST:PORT)" if name in ("FlinkRunner", "SparkRunner") else ""))
    if name not in SUPPORTED:
        raise RunnerProblem(f"runner {name} is not supported by cxj stream (supported: {', '.join(SUPPORTED)})")
    for option in ("setup_file", "requirements_file"):
        value = getattr(known, option, None)
        if value and not os.path.isfile(value):
            raise RunnerProblem(f"--{option} {value}: no such file")
    setup_file = getattr(known, "setup_file", None)
    if setup_file and os.path.basename(setup_file) not in ("setup.py", "pyproject.toml"):
        raise RunnerProblem(f"--setup_file {setup_file}: must name a setup.py or pyproject.toml (Beam builds an sdist "
                            "of its folder and stages it)")
    if setup_file and os.path.basename(setup_file) == "pyproject.toml" and importlib.util.find_spec("build") is None:
        raise RunnerProblem(f"--setup_file {setup_file}: Beam builds the sdist with `python -m build --no-isolation`; "
                            "install it here first (pip install build)")
    if name in IN_PROCESS:
        if not bounded:
            raise RunnerProblem(f"{name} runs cxj stream only in the bounded mode (--stop-at-end); an unbounded job needs "
                                "a streaming runner: --runner=PortableRunner --job_endpoint=HOST:PORT (Flink, Spark "
                                "job servers) or --runner=DataflowRunner")
        return RunnerPlan(name, in_process=True)
    if name in ("FlinkRunner", "SparkRunner"):
        jar_option = "flink_job_server_jar" if name == "FlinkRunner" else "spark_job_server_jar"
        jar = getattr(known, jar_option, None)
        endpoint = getattr(known, "job_endpoint", None)
        if not endpoint and not (jar and os.path.isfile(jar)):
            raise RunnerProblem(f"{name} downloads its job-server jar from Maven at submission; give --{jar_option} FILE "
                                "(a local jar), or start the job server yourself and use --runner=PortableRunner "
                                "--job_endpoint=HOST:PORT")
    if name == "DataflowRunner":
        missing = [o for o in ("project", "region", "temp_location") if not getattr(known, o, None)]
        if missing:
            raise RunnerProblem(f"DataflowRunner needs --{' --'.join(missing)}")
        return RunnerPlan(name, in_process=False)
    endpoint = getattr(known, "job_endpoint", None)
    if name == "PortableRunner" and not endpoint:
        raise RunnerProblem("PortableRunner needs --job_endpoint=HOST:PORT (a Flink/Spark job server, or "
                            "python -m apache_beam.runners.portability.local_job_service_main)")
    environment = (getattr(known, "environment_type", None) or "").upper()
    worker_pool = getattr(known, "environment_config", None) if environment == "EXTERNAL" else None
    if environment == "EXTERNAL" and not worker_pool:
        raise RunnerProblem("--environment_type=EXTERNAL needs --environment_config=HOST:PORT (a worker pool)")
    if environment == "DOCKER" and shutil.which("docker") is None:
        raise RunnerProblem("--environment_type=DOCKER needs docker on this machine (image: infra/worker/Dockerfile); "
                            "or use --environment_type=EXTERNAL with a worker pool")
    if environment == "LOOPBACK" and bounded is False:
        raise RunnerProblem("--environment_type=LOOPBACK runs the workers inside this process; an unbounded job needs "
                            "EXTERNAL or DOCKER workers")
    return RunnerPlan(name, in_process=False, job_endpoint=endpoint, worker_pool=worker_pool,
                      job_server_options=tuple(a for a in unknown if a.startswith("--")))


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "localhost", int(port)


def check_endpoints(plan: RunnerPlan, timeout_s: float) -> None:
    """The job endpoint answers gRPC, and an EXTERNAL worker pool accepts connections, in time."""
    if plan.job_endpoint:
        import grpc

        channel = grpc.insecure_channel(plan.job_endpoint)
        try:
            grpc.channel_ready_future(channel).result(timeout=timeout_s)
        except grpc.FutureTimeoutError:
            channel.close()
            raise EndpointUnreachable(f"job endpoint {plan.job_endpoint} did not answer within {timeout_s:g}s "
                                      "(is the job server running? --job-endpoint-timeout)") from None
        try:
            if plan.job_server_options:
                _check_job_server_options(channel, plan, timeout_s)
        finally:
            channel.close()
    if plan.worker_pool:
        try:
            host, port = _host_port(plan.worker_pool)
            with socket.create_connection((host, port), timeout=timeout_s):
                pass
        except (OSError, ValueError) as exc:
            raise EndpointUnreachable(f"worker pool {plan.worker_pool} (--environment_config) is not reachable: {exc}") from None


def _check_job_server_options(channel, plan: RunnerPlan, timeout_s: float) -> None:  # type: ignore[no-untyped-def]
    """Options the Python SDK does not know must be ones the job server describes (what Beam's
    PortableRunner forwards); anything else is a typo or meant for another runner."""
    import grpc
    from apache_beam.portability.api import beam_job_api_pb2, beam_job_api_pb2_grpc

    try:
        described = beam_job_api_pb2_grpc.JobServiceStub(channel).DescribePipelineOptions(
            beam_job_api_pb2.DescribePipelineOptionsRequest(), timeout=timeout_s)
    except grpc.RpcError as exc:
        raise EndpointUnreachable(f"job endpoint {plan.job_endpoint} did not describe its pipeline options: "
                                  f"{exc.code().name}") from None
    takes = {option.name for option in described.options}
    for argument in plan.job_server_options:
        option = argument[2:].split("=", 1)[0]
        if option not in takes:
            raise RunnerProblem(f"unknown Apache Beam option --{option}: neither the Python SDK nor the job server at "
                                f"{plan.job_endpoint} takes it" + (f" (it takes: {', '.join(sorted(takes)[:12])}"
                                                                    f"{', ...' if len(takes) > 12 else ''})" if takes else ""))
