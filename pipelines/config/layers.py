"""One configuration story: every option from the command line, a `CXJ_...` variable or a file.

Precedence, highest first: command line > environment (`CXJ_<OPTION>`, e.g. `--max-batch-events`
is `CXJ_MAX_BATCH_EVENTS`) > config file > built-in default. The config file is `--config FILE`,
else `$CXJ_CONFIG`, else `./cxj.toml` when it exists. It is TOML: top-level keys apply to every
command that has the option, a `[run]` / `[status]` / ... table to that command only (and wins
over the top level). Keys are option names with `_` or `-`.

Why strict: an option that is silently ignored is worse than an error, so unknown keys, unknown
sections and values that the option would refuse on the command line are errors naming the
file (or variable) and the key. Passwords never come from a file or the command line: only from
`CXJ_SASL_PASSWORD` / `CXJ_SSL_PASSWORD`, so they stay out of `ps`, shell history and repos.
Values from the environment and the file go through the same type and choice checks as the
command line (argparse would not check a default against its choices).
"""
from __future__ import annotations

import argparse
import difflib
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

ENV_PREFIX = "CXJ_"
CONFIG_ENV = "CXJ_CONFIG"
DEFAULT_CONFIG_FILE = "cxj.toml"
SECRET_ENV = {"CXJ_SASL_PASSWORD": "SASL password", "CXJ_SSL_PASSWORD": "password of the client key"}
# Variables read elsewhere that are not command options: operator settings of the read replica,
# the readers' opt-in folders (also read by connect()/query(), which have no command line), and
# the report's cache of its inlined chart library, how long a shared-lake publish retries lost commits,
# whether `run` reads the next batch ahead in a second process, and DuckDB's memory limit for the
# store (read wherever a store is opened).
OTHER_ENV = {CONFIG_ENV, "CXJ_REPLICA", "CXJ_REPLICA_COMPACT_EVERY", "CXJ_REPLICA_MERGE_EVERY", "CXJ_REPLICA_RETENTION",
             "CXJ_SQL_ALLOW_READ", "CXJ_CACHE_DIR", "CXJ_LAKE_RETRY_S", "CXJ_INGEST_AHEAD", "CXJ_DUCKDB_MEMORY_LIMIT"}
_NOT_CONFIGURABLE = {"help", "version", "config"}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class ConfigError(ValueError):
    """A setting from the environment or the config file is wrong; the message names where."""


@dataclass
class Source:
    """Where an option's effective value came from, for `cxj config show`."""

    kind: str  # default | file | env | command line
    where: str = ""  # the file path or the variable name

    def describe(self) -> str:
        return f"{self.kind} {self.where}".strip()


def env_name(option: str) -> str:
    """`--max-batch-events` -> `CXJ_MAX_BATCH_EVENTS`."""
    return ENV_PREFIX + option.lstrip("-").replace("-", "_").upper()


def key_name(option: str) -> str:
    """`--max-batch-events` -> `max_batch_events` (the config file key)."""
    return option.lstrip("-").replace("-", "_")


def configurable_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """Options with a long name that may come from the environment or a file."""
    found = []
    for action in parser._actions:  # argparse keeps no public list of a parser's options
        longs = [s for s in action.option_strings if s.startswith("--")]
        if longs and action.dest not in _NOT_CONFIGURABLE and not isinstance(action, argparse._SubParsersAction):
            found.append(action)
    return found


def long_option(action: argparse.Action) -> str:
    return next(s for s in action.option_strings if s.startswith("--"))


def _normal(name: str) -> str:
    return name.lstrip("-").replace("_", "-").lower()


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """' (did you mean X?)' or '' — compares names with Beam's underscore style and case normalised."""
    by_normal: dict[str, str] = {}
    for candidate in candidates:
        by_normal.setdefault(_normal(candidate), candidate)
    normal = _normal(word)
    if normal in by_normal:
        close = [by_normal[normal]]
    else:
        close = [by_normal[m] for m in difflib.get_close_matches(normal, list(by_normal), n=2, cutoff=0.72)]
    return f" (did you mean {' or '.join(close)}?)" if close else ""


# --------------------------------------------------------------------------- the file


def find_config_file(argv: Sequence[str], environ: Mapping[str, str], cwd: Path) -> tuple[Optional[Path], bool]:
    """The config file to read and whether it was asked for explicitly (then it must exist)."""
    for i, token in enumerate(argv):
        if token == "--config" and i + 1 < len(argv):
            return (cwd / argv[i + 1]).absolute(), True
        if token.startswith("--config="):
            return (cwd / token.split("=", 1)[1]).absolute(), True
    if environ.get(CONFIG_ENV):
        return (cwd / environ[CONFIG_ENV]).absolute(), True
    default = cwd / DEFAULT_CONFIG_FILE
    return (default.absolute(), False) if default.is_file() else (None, False)


def read_config_file(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: not valid TOML: {exc}") from None


def check_config_keys(data: dict[str, Any], path: Path, parsers: Mapping[str, argparse.ArgumentParser]) -> None:
    """Every key must be an option of some command (top level) or of its command (a table)."""
    keys_of = {cmd: {key_name(long_option(a)) for a in configurable_actions(p)} for cmd, p in parsers.items()}
    everywhere = set().union(*keys_of.values()) if keys_of else set()
    for key, value in data.items():
        if isinstance(value, dict):
            if key not in parsers:
                raise ConfigError(f"config file {path}: [{key}] is not a cxj command{did_you_mean(key, parsers)}")
            for sub in value:
                _check_key(sub, keys_of[key], path, f"[{key}] ")
        else:
            _check_key(key, everywhere, path, "")


def _check_key(key: str, known: set[str], path: Path, where: str) -> None:
    normal = key.replace("-", "_")
    if normal in ("sasl_password", "ssl_password", "sasl_plain_password"):
        raise ConfigError(f"config file {path}: {where}{key}: passwords are read only from the environment "
                          "(CXJ_SASL_PASSWORD, CXJ_SSL_PASSWORD), never from a file")
    if normal not in known:
        raise ConfigError(f"config file {path}: {where}{key} is not an option{did_you_mean(normal, sorted(known))}")


# --------------------------------------------------------------------------- applying


def _convert(parser: argparse.ArgumentParser, action: argparse.Action, value: Any, where: str,
             base_dir: Optional[Path]) -> Any:
    """The value an option would get from the command line, with the same checks."""
    option = long_option(action)
    if action.nargs == 0:  # flags: --follow, --quiet, --json ...
        if isinstance(value, bool):
            on = value
        elif str(value).strip().lower() in _TRUE:
            on = True
        elif str(value).strip().lower() in _FALSE:
            on = False
        else:
            raise ConfigError(f"{where}: {option} is a flag; use true or false, not {value!r}")
        if isinstance(action, argparse._StoreTrueAction):
            return on
        if isinstance(action, argparse._StoreFalseAction):
            return not on
        return action.const if on else action.default
    if isinstance(value, bool):
        raise ConfigError(f"{where}: {option} takes a value, not {str(value).lower()}")
    text = str(value)
    if base_dir is not None and action.type is Path and not Path(text).expanduser().is_absolute():
        text = str(base_dir / text)  # paths in a file are relative to the file, wherever cxj runs
    try:
        return parser._get_values(action, [text])  # argparse's own conversion and choices check
    except argparse.ArgumentError as exc:
        raise ConfigError(f"{where}: {option}: {exc.message}") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {option}: invalid value {text!r}: {exc}") from None


def apply_sources(parser: argparse.ArgumentParser, command: str, argv: Sequence[str], environ: Mapping[str, str],
                  file_data: dict[str, Any], file_path: Optional[Path]) -> dict[str, Source]:
    """Sets the parser's defaults from the file and the environment; returns each option's source.

    The command line still wins because argparse only falls back to a default when the option
    is not given. Options of a mutually exclusive group (--once/--follow) given on the command
    line also override the others' environment or file values.
    """
    actions = configurable_actions(parser)
    sources: dict[str, Source] = {a.dest: Source("default") for a in actions}
    values: dict[str, Any] = {}
    section = file_data.get(command, {}) if isinstance(file_data.get(command), dict) else {}
    top = {k: v for k, v in file_data.items() if not isinstance(v, dict)}
    for action in actions:
        key = key_name(long_option(action))
        for layer, where_kind in ((top, "file"), (section, "file")):
            for candidate in (key, key.replace("_", "-")):
                if candidate in layer:
                    where = f"config file {file_path}" + (f" [{command}]" if layer is section else "")
                    values[action.dest] = _convert(parser, action, layer[candidate], f"{where} {candidate}",
                                                   file_path.parent if file_path else None)
                    sources[action.dest] = Source(where_kind, str(file_path) + (f" [{command}]" if layer is section else ""))
        variable = env_name(long_option(action))
        if variable in environ:
            values[action.dest] = _convert(parser, action, environ[variable], f"environment {variable}", None)
            sources[action.dest] = Source("env", variable)
    given = given_on_command_line(parser, argv)
    for group in parser._mutually_exclusive_groups:
        members = {a.dest for a in group._group_actions}
        if members & given:
            for dest in members - given:
                values.pop(dest, None)
                sources[dest] = Source("default")
    for dest in given:
        if dest in sources:
            sources[dest] = Source("command line")
    for action in actions:
        if action.dest in values:
            action.default = values[action.dest]
            action.required = False  # a required option given by the environment or the file is given
    return sources


def given_on_command_line(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """Dests of the options spelled out in argv (abbreviations are off, so spelling is exact)."""
    given = set()
    for action in parser._actions:
        for option in action.option_strings:
            if any(t == option or (option.startswith("--") and t.startswith(option + "=")) for t in argv):
                given.add(action.dest)
    return given


def unknown_env(environ: Mapping[str, str], parsers: Mapping[str, argparse.ArgumentParser]) -> list[str]:
    """`CXJ_` variables that no command reads: a typo there would otherwise be silently ignored."""
    known = set(SECRET_ENV) | OTHER_ENV
    for p in parsers.values():
        known |= {env_name(long_option(a)) for a in configurable_actions(p)}
    return [f"{name}{did_you_mean(name, sorted(known))}" for name in sorted(environ)
            if name.startswith(ENV_PREFIX) and name not in known]


def masked(name: str, environ: Mapping[str, str]) -> str:
    return "*** (set)" if environ.get(name) else "(not set)"
