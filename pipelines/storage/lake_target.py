"""Which lake readers and writers use: the local replica next to ``--db``, or a shared lake.

The local default needs no server: a DuckLake with a SQLite catalog in ``<db>.lake/``, written
by the one process that holds ``--db`` (pipelines/storage/replica.py). A *shared* lake is a
DuckLake whose catalog lives in PostgreSQL, so several writer processes (each with its own
``--db`` working store) and any number of readers use it at once
(pipelines/storage/shared_lake.py, docs/storage.md "Shared lake").

    --lake postgresql://cxj@db.internal:5432/cxj_lake      (or CXJ_LAKE)
    --lake 'postgres:dbname=cxj_lake host=/run/postgresql'  (libpq keywords)
    --lake-data /shared/cxj-lake/                            (or CXJ_LAKE_DATA; where the Parquet
                                                              files go; needed only to create it)

Passwords never go into the spec (it shows up in `ps`, logs and shell history): libpq reads
PGPASSWORD or ~/.pgpass (PGPASSFILE), as every PostgreSQL client does. A spec with a password
is refused with one line.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional
from urllib.parse import parse_qsl, unquote, urlsplit

LAKE_ENV = "CXJ_LAKE"
LAKE_DATA_ENV = "CXJ_LAKE_DATA"

_KEYWORD = re.compile(r"\s*([A-Za-z_]+)\s*=\s*('(?:[^'\\]|\\.)*'|\S*)")
_SAFE_VALUE = re.compile(r"^[A-Za-z0-9_./:@%+,~-]*$")
_URL_PARAMS = {"sslmode", "sslrootcert", "sslcert", "sslkey", "connect_timeout", "application_name",
               "options", "target_session_attrs", "host", "port", "user", "dbname"}


class LakeSpecError(ValueError):
    """A --lake / CXJ_LAKE value that cannot be used (one line, says why)."""


@dataclass(frozen=True)
class LakeTarget:
    """A shared lake: its PostgreSQL catalog (libpq keywords) and, optionally, its data folder."""

    libpq: str  # e.g. "dbname=cxj_lake host=127.0.0.1 port=5432 user=cxj"
    data_path: Optional[str] = None  # absolute folder (ends with /); None: the one the catalog records

    @property
    def attach_target(self) -> str:
        return "ducklake:postgres:" + self.libpq

    def describe(self) -> str:
        """For log lines: the catalog and folder (the spec never holds a password)."""
        return f"shared lake postgres[{self.libpq}]" + (f" data {self.data_path}" if self.data_path else "")


def _quote(value: str) -> str:
    if value and _SAFE_VALUE.match(value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _from_url(spec: str) -> dict[str, str]:
    parts = urlsplit(spec)
    if parts.password is not None:
        raise LakeSpecError("the --lake URL holds a password: give it in PGPASSWORD or ~/.pgpass instead "
                            "(a spec shows up in `ps`, logs and shell history)")
    keywords: dict[str, str] = {}
    if parts.hostname:
        keywords["host"] = unquote(parts.hostname)
    if parts.port:
        keywords["port"] = str(parts.port)
    if parts.username:
        keywords["user"] = unquote(parts.username)
    database = unquote(parts.path.lstrip("/"))
    if database:
        keywords["dbname"] = database
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key == "password":
            raise LakeSpecError("the --lake URL holds a password: give it in PGPASSWORD or ~/.pgpass instead")
        if key not in _URL_PARAMS:
            raise LakeSpecError(f"the --lake URL parameter {key!r} is not supported (use one of {', '.join(sorted(_URL_PARAMS))})")
        keywords[key] = value
    return keywords


def _from_keywords(text: str) -> dict[str, str]:
    keywords: dict[str, str] = {}
    position = 0
    text = text.strip()
    while position < len(text):
        match = _KEYWORD.match(text, position)
        if not match or match.end() == position:
            raise LakeSpecError(f"cannot read the --lake catalog {text[:60]!r}: expected keyword=value pairs "
                                "(e.g. 'postgres:dbname=lake host=/run/postgresql')")
        key, value = match.group(1).lower(), match.group(2)
        if value.startswith("'"):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        if key == "password":
            raise LakeSpecError("the --lake catalog holds a password: give it in PGPASSWORD or ~/.pgpass instead "
                                "(a spec shows up in `ps`, logs and shell history)")
        keywords[key] = value
        position = match.end()
    return keywords


def parse_lake(spec: str, data: Optional[str | Path] = None) -> LakeTarget:
    """The target of ``--lake SPEC [--lake-data DIR]``; LakeSpecError when it cannot be used."""
    spec = spec.strip()
    lowered = spec.lower()
    if lowered.startswith(("postgresql://", "postgres://")):
        keywords = _from_url(spec)
    elif lowered.startswith(("postgres:", "postgresql:")):
        keywords = _from_keywords(spec.split(":", 1)[1])
    else:
        raise LakeSpecError(f"--lake {spec[:60]!r}: expected postgresql://[user@]host[:port]/database or "
                            "postgres:<libpq keywords> (the local replica next to --db needs no --lake)")
    if not keywords.get("dbname"):
        raise LakeSpecError("--lake names no database (postgresql://host/DATABASE or dbname=...)")
    libpq = " ".join(f"{k}={_quote(v)}" for k, v in keywords.items())
    data_path = None
    if data is not None and str(data).strip():
        text = str(data).strip()
        if "://" in text:
            raise LakeSpecError(f"--lake-data {text[:60]!r}: only a folder path is supported here "
                                "(a shared folder every writer and reader mounts at the same path)")
        data_path = str(Path(text).expanduser().resolve()) + "/"
    return LakeTarget(libpq=libpq, data_path=data_path)


def lake_from_env(spec: Optional[str] = None, data: Optional[str | Path] = None) -> Optional[LakeTarget]:
    """``spec``/``data`` when given, else CXJ_LAKE / CXJ_LAKE_DATA; None: the local replica."""
    spec = spec if spec else os.environ.get(LAKE_ENV, "")
    if not spec or not spec.strip():
        return None
    return parse_lake(spec, data if data is not None else os.environ.get(LAKE_DATA_ENV) or None)
