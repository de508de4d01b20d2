"""Which Apache Beam pipeline options `cxj run` passes through, and which runner it will use.

`cxj run` hands the options it does not know itself to Beam's PipelineOptions, as Beam
pipelines do. Beam silently drops options it does not know either, so a typo
(`--max_batch_events=500`, `--runer=...`) would change nothing and say nothing. Here every
pass-through option is checked against the options Beam itself registers, and the runner is
resolved (imported) before the database or the replica is created, so a wrong runner fails
first, in one line.
"""
from __future__ import annotations

import argparse
import functools
import importlib
from typing import Sequence

# The in-process portable runner behind the DirectRunner, named directly: the plain
# DirectRunner first tries Prism, which downloads a binary at run time.
DEFAULT_RUNNER = "apache_beam.runners.portability.fn_api_runner.FnApiRunner"


class BeamOptionError(ValueError):
    """An option Beam does not know, or a runner that does not exist; one line for the user."""


@functools.lru_cache(maxsize=1)
def beam_parser() -> argparse.ArgumentParser:
    """An argparse parser holding every option that Beam's PipelineOptions classes register."""
    from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

    parser = _BeamArgumentParser(allow_abbrev=False, add_help=False)
    seen: dict[str, type] = {}
    for cls in PipelineOptions.__subclasses__():
        seen.setdefault(str(cls), cls)
    for cls in seen.values():
        cls._add_argparse_args(parser)  # how Beam itself builds its parser (get_all_options)
    return parser


def beam_option_names() -> list[str]:
    return sorted({s for a in beam_parser()._actions for s in a.option_strings if s.startswith("--")})


def split_unknown(extra: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """Parses ``extra`` with Beam's options; returns them and what Beam does not know either."""
    parser = beam_parser()

    def refuse(message: str) -> None:
        raise BeamOptionError(message)

    parser.error = refuse  # type: ignore[method-assign]  # one line instead of Beam's usage dump
    return parser.parse_known_args(list(extra))


def runner_path(beam_args: Sequence[str]) -> str:
    """The runner Beam will use for these arguments (ours by default), as a module path."""
    from apache_beam.options.pipeline_options import StandardOptions

    known, _ = split_unknown(beam_args)
    name = getattr(known, "runner", None)
    if not name:
        return DEFAULT_RUNNER
    by_name = {path.rsplit(".", 1)[-1].lower(): path for path in StandardOptions.ALL_KNOWN_RUNNERS}
    path = by_name.get(name.lower(), by_name.get(name.lower() + "runner", name))
    if "." not in path:
        from pipelines.config.layers import did_you_mean

        names = [p.rsplit(".", 1)[-1] for p in StandardOptions.ALL_KNOWN_RUNNERS]
        raise BeamOptionError(f"unknown Beam runner {name!r}{did_you_mean(name, names)}; known runners: {', '.join(names)}")
    return path


def check_runner(beam_args: Sequence[str]) -> str:
    """Imports the runner class so a runner that cannot load fails before anything is created."""
    path = runner_path(beam_args)
    module, cls = path.rsplit(".", 1)
    try:
        if not hasattr(importlib.import_module(module), cls):
            raise BeamOptionError(f"Beam runner {path}: module {module} has no {cls}")
    except ImportError as exc:
        raise BeamOptionError(f"Beam runner {path} cannot be loaded: {exc}") from None
    return path


def describe_runner(beam_args: Sequence[str]) -> str:
    """The runner and its parallelism settings, for the run's first log line."""
    known, _ = split_unknown(beam_args)
    path = runner_path(beam_args)
    name = path.rsplit(".", 1)[-1]
    if name in ("FnApiRunner", "DirectRunner", "SwitchingDirectRunner", "BundleBasedDirectRunner"):
        workers = getattr(known, "direct_num_workers", 1) or 1
        mode = getattr(known, "direct_running_mode", "in_memory") or "in_memory"
        return f"{name} (in-process; {workers} worker{'s' if workers != 1 else ''}, mode {mode})"
    endpoint = getattr(known, "job_endpoint", None)
    parallelism = getattr(known, "parallelism", None)
    details = [f"job endpoint {endpoint}" if endpoint else "", f"parallelism {parallelism}" if parallelism else ""]
    shown = ", ".join(d for d in details if d)
    return f"{name}" + (f" ({shown})" if shown else "")
