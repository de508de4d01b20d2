"""Reader connections that cannot change anything: not the data, not files, not their own rules.

Every reader (`cxj sql`, `pipelines.connect()/query()`, `cxj status`, `cxj check`, the marts)
gets its DuckDB connection through `harden()` and runs SQL through `ReaderConnection`. Two
independent layers, because neither alone is enough in DuckDB 1.5.5 (measured, see
docs/security.md "Readers cannot write"):

1. The engine: extensions are loaded and the replica attached READ_ONLY first, then
   ``enable_external_access = false`` with ``allowed_directories`` holding only the replica's
   Parquet folder (DuckLake cannot read its data files otherwise) plus the directories the user
   opted into, and finally ``lock_configuration = true`` so no later SET/RESET can undo it.
   This stops reads of other files (``read_csv('/etc/passwd')``), COPY/EXPORT to other paths,
   INSTALL/LOAD, writes to the attached replica, and every settings change.
2. The statement: DuckDB still lets a locked connection ATTACH a DuckLake or SQLite catalog it
   already touches *read-write*, COPY into an allowed folder (which would overwrite a replica
   data file), run ``ducklake_cleanup_old_files`` / ``ducklake_delete_orphaned_files`` (which
   delete files on a read-only attach) and ``sqlite_query``. So the parser decides first: only
   SELECT-like statements (SELECT, FROM, WITH, VALUES, DESCRIBE, SHOW, SUMMARIZE, PRAGMA
   table_info, EXPLAIN of those) and transaction control run, and no SELECT may call a
   function that changes state or runs SQL hidden in a string.

Refusals raise `ReaderRefused` (a ``duckdb.PermissionException``), so callers that already
handle DuckDB errors report them as one line.
"""
from __future__ import annotations

import json
import os
import re
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence

import duckdb

ALLOW_READ_ENV = "CXJ_SQL_ALLOW_READ"  # os.pathsep-separated directories a reader may also read

# Statement kinds a reader may run (by the parser's own classification).
ALLOWED_STATEMENTS = {duckdb.StatementType.SELECT, duckdb.StatementType.TRANSACTION}

# DuckLake functions that only read the catalog; every other ducklake_* function is refused
# (several change the catalog or delete files, and new ones appear with new versions).
READ_ONLY_DUCKLAKE_FUNCTIONS = frozenset({
    "ducklake_snapshots", "ducklake_table_info", "ducklake_list_files", "ducklake_current_snapshot",
    "ducklake_last_committed_snapshot", "ducklake_table_changes", "ducklake_table_insertions",
    "ducklake_table_deletions", "ducklake_options", "ducklake_settings",
})
# Functions that run SQL given as a string (which the statement check cannot see into), or
# act on attached catalogs behind DuckDB's back.
REFUSED_FUNCTIONS = frozenset({
    "query", "query_table", "sqlite_query", "sqlite_attach", "postgres_query", "postgres_execute",
    "postgres_attach", "mysql_query", "mysql_execute", "checkpoint", "force_checkpoint",
})

_EXPLAIN = re.compile(r"^\s*explain(\s+analy[sz]e)?\s+", re.IGNORECASE)
_parser_lock = threading.Lock()
_parser: Optional[duckdb.DuckDBPyConnection] = None


# Settings a reader connection is created with (some cannot change once the instance is used).
CONNECT_CONFIG = {
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "allow_persistent_secrets": False,
}


class ReaderRefused(duckdb.PermissionException):
    """A reader tried something that could change data, files or its own safety settings."""


def _serializer() -> duckdb.DuckDBPyConnection:
    """A private in-memory connection used only to turn SQL text into its parse tree."""
    global _parser
    if _parser is None:
        _parser = duckdb.connect()
    return _parser


def _function_names(tree: Any) -> Iterable[str]:
    if isinstance(tree, dict):
        name = tree.get("function_name")
        if isinstance(name, str):
            yield name.lower()
        for value in tree.values():
            yield from _function_names(value)
    elif isinstance(tree, list):
        for value in tree:
            yield from _function_names(value)


def _refused_function(name: str) -> bool:
    if name in REFUSED_FUNCTIONS:
        return True
    return name.startswith("ducklake_") and name not in READ_ONLY_DUCKLAKE_FUNCTIONS


def _check_select(text: str) -> None:
    """Refuses a SELECT that calls a state-changing or SQL-running function anywhere inside."""
    with _parser_lock:
        serialized = _serializer().execute("SELECT json_serialize_sql(?)", [text]).fetchone()[0]
    tree = json.loads(serialized)
    if tree.get("error"):
        # Forms the serializer does not cover (DESCRIBE, SHOW, PRAGMA table_info, ...): fall
        # back to the text itself — any refused name followed by "(" is refused.
        names = {m.group(1).lower() for m in re.finditer(r"([A-Za-z_][A-Za-z0-9_]*)\s*\(", text)}
    else:
        names = set(_function_names(tree))
    bad = sorted(n for n in names if _refused_function(n))
    if bad:
        raise ReaderRefused(f"read-only: the function {bad[0]}() is not allowed for readers (it can change data or run other SQL)")


def _split(sql: str) -> list[Any]:
    """The statements of ``sql`` as DuckDB's parser sees them, on our private connection (never
    the process-wide default one, whose state other code may change)."""
    with _parser_lock:
        return _serializer().extract_statements(sql)


def check_sql(sql: str) -> None:
    """Raises ReaderRefused unless every statement in ``sql`` is a plain read. Fails closed: SQL
    the parser cannot classify is refused, except plain syntax errors, which DuckDB's own parser
    reports identically when the statement runs (nothing runs)."""
    try:
        statements = _split(sql)
    except duckdb.ParserException:
        return
    except duckdb.Error as exc:
        raise ReaderRefused(f"read-only: this statement cannot be checked, so it is not run ({str(exc).splitlines()[0]})") from None
    for statement in statements:
        kind = statement.type
        text = statement.query
        if kind == duckdb.StatementType.EXPLAIN:
            inner = _EXPLAIN.sub("", text, count=1)
            try:
                parts = _split(inner)
            except duckdb.Error:
                parts = []
            if len(parts) != 1 or parts[0].type != duckdb.StatementType.SELECT:
                raise ReaderRefused("read-only: EXPLAIN is allowed only for SELECT queries")
            _check_select(parts[0].query)
            continue
        if kind not in ALLOWED_STATEMENTS:
            raise ReaderRefused(
                f"read-only: {kind.name} statements are not allowed for readers; "
                "only queries (SELECT, FROM, WITH, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN) run here"
            )
        if kind == duckdb.StatementType.SELECT:
            _check_select(text)


def allowed_read_dirs(extra: Sequence[Path | str] = ()) -> list[Path]:
    """Directories the user opted into reading (``--allow-read`` and CXJ_SQL_ALLOW_READ)."""
    dirs = [Path(d) for d in extra]
    dirs += [Path(d) for d in os.environ.get(ALLOW_READ_ENV, "").split(os.pathsep) if d.strip()]
    return [d.expanduser().resolve() for d in dirs]


def _list(values: Iterable[str]) -> str:
    return "[" + ", ".join("'" + v.replace("'", "''") + "'" for v in values) + "]"


def harden(con: duckdb.DuckDBPyConnection, read_dirs: Sequence[Path] = (), output_paths: Sequence[Path] = ()) -> None:
    """Locks an already-set-up reader connection down (call after LOAD and ATTACH ... READ_ONLY).

    ``read_dirs``: folders the reader needs (the replica's data folder) or the user opted into.
    ``output_paths``: exact files the calling command itself writes (``cxj sql --output``);
    statements still cannot write them (COPY is refused), only the command's own writer can.
    """
    dirs = [str(Path(d).resolve()).rstrip("/") + "/" for d in read_dirs]
    paths = [str(Path(p).resolve()) for p in output_paths]
    for statement in (
        "SET autoinstall_known_extensions = false",
        "SET autoload_known_extensions = false",
        "SET allow_community_extensions = false",
        f"SET allowed_directories = {_list(dirs)}",
        f"SET allowed_paths = {_list(paths)}",
        "SET enable_external_access = false",
        "SET lock_configuration = true",
    ):
        con.execute(statement)


# Relation methods that create or change tables/views, or that write files.
_RELATION_WRITES = frozenset({"insert", "insert_into", "create", "create_view", "to_table", "to_view", "update"})
_RELATION_FILE_WRITES = frozenset({"write_csv", "write_parquet", "to_csv", "to_parquet"})


class ReaderRelation:
    """A DuckDB relation whose methods cannot create tables or write files other than the
    command's own output file; everything else is the relation's own behaviour."""

    def __init__(self, relation: duckdb.DuckDBPyRelation, outputs: frozenset[str]) -> None:
        self._relation = relation
        self._outputs = outputs

    def __getattr__(self, name: str) -> Any:
        if name in _RELATION_WRITES:
            raise ReaderRefused(f"read-only: relation.{name}() is not allowed for readers")
        attribute = getattr(self._relation, name)
        if name in _RELATION_FILE_WRITES:
            return self._file_writer(name, attribute)
        if not callable(attribute):
            return attribute

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            return _wrap(attribute(*args, **kwargs), self._outputs)

        return wrapped

    def _file_writer(self, name: str, method: Any) -> Any:
        def write(path: Any, *args: Any, **kwargs: Any) -> Any:
            target = str(Path(str(path)).resolve())  # the form allowed_paths holds
            if target not in self._outputs:
                raise ReaderRefused(f"read-only: readers do not write files ({name} {path})")
            return method(target, *args, **kwargs)

        return write

    def __repr__(self) -> str:
        return repr(self._relation)

    def __str__(self) -> str:
        return str(self._relation)

    def __len__(self) -> int:
        return len(self._relation)


@contextmanager
def _explained() -> Iterator[None]:
    """Adds to DuckDB's file-access refusal how a user opts a folder of their own in."""
    try:
        yield
    except ReaderRefused:
        raise
    except duckdb.PermissionException as exc:
        first = str(exc).strip().splitlines()[0]
        if "disabled by configuration" in first:
            raise ReaderRefused(
                f"{first} (readers read only the journey data; `cxj sql --allow-read DIR` or "
                f"{ALLOW_READ_ENV}=DIR lets them read files of yours, read-only)"
            ) from None
        raise
    except duckdb.Error as exc:
        lines = [line.strip() for line in str(exc).splitlines()
                 if line.strip() and not line.strip().startswith("LINE ") and set(line.strip()) != {"^"}]
        if len(lines) <= 1:
            raise
        raise type(exc)(" ".join(lines)) from None  # one line, same kind of error


def _wrap(value: Any, outputs: frozenset[str]) -> Any:
    return ReaderRelation(value, outputs) if isinstance(value, duckdb.DuckDBPyRelation) else value


class ReaderConnection:
    """A read-only DuckDB connection: every SQL text passes `check_sql` before DuckDB sees it.

    Behaves like ``duckdb.DuckDBPyConnection`` for reading (execute/sql/query/fetch*/df/pl/
    description/cursor/close/context manager). Writes, ATTACH/DETACH, COPY, SET, INSTALL/LOAD
    and friends raise ReaderRefused; the engine settings (see `harden`) refuse what slips past.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, source: str, outputs: Iterable[Path] = (),
                 protected: Any = None) -> None:
        self._con = con
        self.source = source  # 'replica' or 'database'
        self._outputs = frozenset(str(Path(p).resolve()) for p in outputs)
        self._protected = protected  # Path -> bool: files no output may go to (the data itself)

    def refuse_output(self, path: Path | str) -> Optional[str]:
        """Why a command reading through this connection must not write ``path`` (None: fine).
        For outputs chosen after opening, e.g. the prompt's `.output FILE`."""
        if self._protected is not None and self._protected(Path(path)):
            return f"refusing to write results to {path}: readers never overwrite the database or its replica"
        return None

    # ---- SQL entry points: checked
    def execute(self, query: str, parameters: Any = None) -> "ReaderConnection":
        check_sql(query)
        with _explained():
            if parameters is None:
                self._con.execute(query)
            else:
                self._con.execute(query, parameters)
        return self

    def executemany(self, query: str, parameters: Any = None) -> "ReaderConnection":
        check_sql(query)
        with _explained():
            self._con.executemany(query, parameters or [])
        return self

    def sql(self, query: str, **kwargs: Any) -> Any:
        check_sql(query)
        with _explained():
            return _wrap(self._con.sql(query, **kwargs), self._outputs)

    query = sql
    from_query = sql

    def cursor(self) -> "ReaderConnection":
        """A second cursor: same database instance, so the same locked settings, same checks."""
        return ReaderConnection(self._con.cursor(), self.source, ())

    def table_function(self, name: str, parameters: Any = None) -> Any:
        if _refused_function(name.lower()):
            raise ReaderRefused(f"read-only: the function {name}() is not allowed for readers (it can change data or run other SQL)")
        return _wrap(self._con.table_function(name, parameters), self._outputs)

    # ---- refused outright (the engine would refuse most of them too)
    def install_extension(self, *args: Any, **kwargs: Any) -> None:
        raise ReaderRefused("read-only: readers do not install extensions")

    def load_extension(self, *args: Any, **kwargs: Any) -> None:
        raise ReaderRefused("read-only: readers do not load extensions")

    def register_filesystem(self, *args: Any, **kwargs: Any) -> None:
        raise ReaderRefused("read-only: readers do not register filesystems")

    def append(self, *args: Any, **kwargs: Any) -> None:
        raise ReaderRefused("read-only: readers do not append to tables")

    # ---- lifecycle
    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> "ReaderConnection":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._con, name)
        if not callable(attribute):
            return attribute

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            result = attribute(*args, **kwargs)
            return self if result is self._con else _wrap(result, self._outputs)

        return wrapped
