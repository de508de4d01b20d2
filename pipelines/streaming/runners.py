"""Which runners `cxj stream` accepts, checked before anything is started.

Why up front: Beam's own failures here are slow or silent. FlinkRunner/SparkRunner download a
job-server jar from Maven at submission (offline: a long stack trace); PortableRunner without
`--job_endpoint` raises NotImplementedError; with an endpoint that does not answer it waits for
minutes. Each case is one line naming the fix, and a job endpoint (and an EXTERNAL worker pool)
must answer within `--job-endpoint-timeout`.
"""
from __future__ import annotations

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


def plan_runner(beam_args: Sequence[str], bounded: bool) -> RunnerPlan:
    """Checks the runner and its options; raises RunnerProblem with one line."""
    try:
        known, unknown = split_unknown(beam_args)
        path = runner_path(beam_args)
    except BeamOptionError as exc:
        raise RunnerProblem(str(exc)) from None
    if unknown:
        raise RunnerProblem(f"unknown Apache Beam option {unknown[0]}")
    name = path.rsplit(".", 1)[-1]
    if name not in SUPPORTED:
        raise RunnerProblem(f"runner {name} is not supported by cxj stream (supported: {', '.join(SUPPORTED)})")
    for option in ("setup_file", "requirements_file"):
        value = getattr(known, option, None)
        if value and not os.path.isfile(value):
            raise RunnerProblem(f"--{option} {value}: no such file")
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
    return RunnerPlan(name, in_process=False, job_endpoint=endpoint, worker_pool=worker_pool)


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
            raise EndpointUnreachable(f"job endpoint {plan.job_endpoint} did not answer within {timeout_s:g}s "
                                      "(is the job server running? --job-endpoint-timeout)") from None
        finally:
            channel.close()
    if plan.worker_pool:
        try:
            host, port = _host_port(plan.worker_pool)
            with socket.create_connection((host, port), timeout=timeout_s):
                pass
        except (OSError, ValueError) as exc:
            raise EndpointUnreachable(f"worker pool {plan.worker_pool} (--environment_config) is not reachable: {exc}") from None
