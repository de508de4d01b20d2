"""Command-line options of the shared lake (docs/storage.md "Shared lake").

`cxj run`: ``--lake`` (where to publish), ``--lake-data`` (its folder, to create it),
``--writer-id`` (the name this process publishes as) and ``--partitions`` (the Kafka partition
indices this process reads, so several processes split the topics between them).
`cxj sql` / `cxj status`: ``--lake`` (what to read). Each is also a CXJ_ variable or a
config-file key (pipelines/config/layers.py).
"""
from __future__ import annotations

import argparse
import logging
import re
from typing import Optional

from pipelines.storage.lake_target import LakeSpecError, parse_lake

_WRITER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,62}$")
_RANGE = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")
MAX_PARTITION = 100_000


def lake_spec(text: str) -> str:
    """argparse type: a --lake value that parses (no password, a database named)."""
    try:
        parse_lake(text)
    except LakeSpecError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def writer_id(text: str) -> str:
    if not _WRITER_ID.match(text):
        raise argparse.ArgumentTypeError(f"{text[:70]!r} is not a writer id (letters, digits, _ . : -; at most 63)")
    return text


def parse_partitions(text: str) -> frozenset[int]:
    """`0,1` / `0-3` / `0-1,4` -> the set of partition indices (argparse type)."""
    chosen: set[int] = set()
    for part in text.split(","):
        match = _RANGE.match(part)
        if not match:
            raise argparse.ArgumentTypeError(f"{text[:70]!r} is not a list of partitions like 0,1 or 0-3")
        low = int(match.group(1))
        high = int(match.group(2)) if match.group(2) is not None else low
        if high < low or high > MAX_PARTITION:
            raise argparse.ArgumentTypeError(f"{part.strip()!r} is not a range of partitions (low-high, at most {MAX_PARTITION})")
        chosen.update(range(low, high + 1))
    return frozenset(chosen)


def add_lake_arguments(parser: argparse.ArgumentParser, writer: bool) -> None:
    parser.add_argument("--lake", type=lake_spec, default=None, metavar="URL",
                        help="a shared lake with a PostgreSQL catalog, e.g. postgresql://user@host:5432/lake "
                             "(password: PGPASSWORD or ~/.pgpass); default: the local replica next to --db")
    if not writer:
        return
    parser.add_argument("--lake-data", default=None, metavar="DIR",
                        help="the shared lake's data folder, mounted at the same path by every writer and reader "
                             "(needed to create the lake; later taken from its catalog)")
    parser.add_argument("--writer-id", type=writer_id, default=None, metavar="NAME",
                        help="the name this process publishes to the shared lake as (default: chosen once and "
                             "kept in --db)")
    parser.add_argument("--partitions", type=parse_partitions, default=None, metavar="LIST",
                        help="read only these partition indices of every topic, e.g. 0,1 or 0-3, so several "
                             "processes split the topics (producers must key all topics by customer_id)")


def lake_target_of(args: argparse.Namespace) -> Optional[object]:
    """The LakeTarget of the parsed options (None: the local replica)."""
    spec: Optional[str] = getattr(args, "lake", None)
    try:
        if not spec:
            if getattr(args, "lake_data", None):
                raise LakeSpecError("--lake-data needs --lake (the local replica keeps its files next to --db)")
            return None
        return parse_lake(spec, getattr(args, "lake_data", None))
    except LakeSpecError as exc:  # one line, exit 4 like every other unusable run option
        logging.getLogger("cxj.run").error("%s", exc)
        raise SystemExit(4) from None
