"""Show the settings a command would run with, and where each one comes from.

  cxj config show                 # for `cxj run`
  cxj config show status --json

Precedence, highest first: command line > environment variable CXJ_<OPTION> > config file
(--config FILE, $CXJ_CONFIG, else ./cxj.toml) > built-in default. Passwords come only from
CXJ_SASL_PASSWORD and CXJ_SSL_PASSWORD and are shown masked.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any, Sequence


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["show"], help="what to do")
    parser.add_argument("target", nargs="?", default="run", metavar="COMMAND", help="the command whose settings to show (default run)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def effective(target: str, config_arg: str | None) -> tuple[list[dict[str, Any]], str | None]:
    """Rows of option, value and source for ``target`` with no command-line options of its own."""
    from pipelines.cli.main import build_parser
    from pipelines.config import layers as config

    _, children = build_parser()
    if target not in children:
        raise config.ConfigError(f"{target!r} is not a cxj command{config.did_you_mean(target, list(children))}")
    argv = ["--config", config_arg] if config_arg else []
    path, _ = config.find_config_file(argv, os.environ, Path.cwd())
    data = config.read_config_file(path) if path is not None else {}
    if data:
        config.check_config_keys(data, path, children)  # type: ignore[arg-type]
    child = children[target]
    sources = config.apply_sources(child, target, [], os.environ, data, path)
    rows = []
    for action in config.configurable_actions(child):
        if action.dest in ("config",):
            continue
        value = action.default
        rows.append({"option": config.long_option(action), "env": config.env_name(config.long_option(action)),
                     "value": str(value) if isinstance(value, Path) else value, "source": sources[action.dest].describe()})
    if any(r["option"] == "--bootstrap-servers" for r in rows):
        for name, meaning in config.SECRET_ENV.items():
            rows.append({"option": f"({meaning})", "env": name, "value": config.masked(name, os.environ),
                         "source": "env" if os.environ.get(name) else "not set"})
    return rows, str(path) if path else None


def main(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from pipelines.config.layers import ConfigError

    try:
        rows, path = effective(args.target, args.config)
    except ConfigError as exc:
        print(f"cxj config: error: {exc}", file=os.sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"command": args.target, "config_file": path, "settings": rows}, indent=2, default=str))
        return 0
    print(f"cxj {args.target}: effective settings (config file: {path or 'none'})")
    width = max(len(r["option"]) for r in rows)
    value_width = min(40, max(len(str(r["value"])) for r in rows))
    for r in rows:
        print(f"  {r['option']:<{width}}  {str(r['value']):<{value_width}}  {r['source']}")
    return 0
