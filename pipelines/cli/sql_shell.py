"""The statement runner and prompt of `cxj sql`: multi-statement input, dot-commands, no crashes.

One `Shell` serves the three ways SQL arrives: a query argument, piped stdin (a script, dot-
commands allowed, like the DuckDB CLI) and the interactive prompt. Input is split into
statements by a small lexer that knows quotes, comments and dollar-quoting, and every
statement's result or error is shown in order — `SELECT 1; SELECT 2;` shows both. Errors are
one line each and never end the prompt; the exit code says whether any statement failed.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, TextIO

from pipelines.cli.sql_output import FORMATS, OutputError, Result, Sink, write

EXIT_OK, EXIT_SQL, EXIT_OUTPUT = 0, 1, 2

HELP = """Type SQL ending with ';' (several lines are fine). Dot-commands:
  .tables [PATTERN]        tables and views, with their descriptions
  .schema [PATTERN]        CREATE statements of tables and views
  .describe NAME           columns of a table or view, with types and descriptions
  .mode [FORMAT]           output format: {formats} (now: {fmt}); .format is the same
  .timer on|off            show how long each statement took (now: {timer})
  .output [FILE]           send results to FILE (appended); without FILE back to the screen
  .maxrows N               table format: rows shown at most, 0 = all (now: {max_rows})
  .help                    this text
  .quit / .exit            leave (or Ctrl-D)
"""


# ---------------------------------------------------------------- splitting


_DOLLAR = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$")


def _scan(text: str) -> tuple[list[str], str, bool]:
    """(complete statements, the rest after the last ';', rest is inside a quote/comment).

    Knows '...' (with ''), "...", -- comments, /* */ comments (nested) and $tag$...$tag$."""
    statements: list[str] = []
    start = i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "'" or ch == '"':
            end = i + 1
            while True:
                end = text.find(ch, end)
                if end < 0:
                    return statements, text[start:], True
                if end + 1 < n and text[end + 1] == ch:
                    end += 2
                    continue
                break
            i = end + 1
        elif text.startswith("--", i):
            end = text.find("\n", i)
            i = n if end < 0 else end + 1
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while depth and j < n:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            if depth:
                return statements, text[start:], True
            i = j
        elif ch == "$" and (m := _DOLLAR.match(text, i)) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            end = text.find(m.group(0), m.end())
            if end < 0:
                return statements, text[start:], True
            i = end + len(m.group(0))
        elif ch == ";":
            statements.append(text[start:i + 1])
            start = i = i + 1
        else:
            i += 1
    return statements, text[start:], False


def _has_code(text: str) -> bool:
    """False for text that is only whitespace, comments and semicolons."""
    stripped = re.sub(r"--[^\n]*|/\*.*?\*/", " ", text, flags=re.S)
    return bool(stripped.replace(";", " ").strip())


def split_statements(text: str) -> list[str]:
    """The statements of ``text``; a last statement without ';' counts too."""
    statements, rest, _ = _scan(text)
    if _has_code(rest):
        statements.append(rest)
    return [s.strip() for s in statements if _has_code(s)]


def is_complete(text: str) -> bool:
    """The prompt's question: does the typed text end a statement (a ';' outside quotes)?"""
    statements, rest, open_quote = _scan(text)
    return not open_quote and bool(statements) and not _has_code(rest)


def error_line(exc: BaseException) -> str:
    """One line naming the cause: DuckDB's first line, plus the statement line it points at."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    first = lines[0]
    where = next((line for line in lines[1:] if line.startswith("LINE ")), None)
    if where:
        first += f" ({where.split(':')[0].lower()})"
    return first


# ---------------------------------------------------------------- the shell


@dataclass
class Shell:
    con: Any
    fmt: str = "table"
    max_rows: int = 100
    stdout: TextIO = field(default=None)  # type: ignore[assignment]
    stderr: TextIO = field(default=None)  # type: ignore[assignment]
    timer: bool = False
    output: Optional[Path] = None       # .output FILE: results appended there
    failed: int = 0
    _output_sink: Optional[Sink] = None

    def __post_init__(self) -> None:
        import sys

        self.stdout = self.stdout or sys.stdout
        self.stderr = self.stderr or sys.stderr

    # ------------------------------------------------------------ output

    def _error(self, text: str) -> None:
        self.stderr.write(f"Error: {text}\n")
        self.stderr.flush()

    def _sink(self) -> Sink:
        if self.output is None:
            return Sink.stdout(self.stdout)
        if self._output_sink is None:
            handle = open(self.output, "a", encoding="utf-8", newline="")
            self._output_sink = Sink(handle, handle.buffer, False, 0, None)
        return self._output_sink

    def _write_parquet_file(self, result: Result) -> None:
        self.close()
        target = Sink.file(self.output)  # type: ignore[arg-type]
        try:
            write(result, "parquet", target)
            target.commit()
        finally:
            target.discard()

    def close(self) -> None:
        if self._output_sink is not None:
            self._output_sink.text.close()
            self._output_sink = None

    # ------------------------------------------------------------ SQL

    def run_sql(self, text: str, sink: Optional[Sink] = None) -> bool:
        """Runs every statement of ``text``, showing each result or error; True if all worked."""
        import duckdb

        statements = split_statements(text)
        ok = True
        for number, statement in enumerate(statements, 1):
            label = f"statement {number}: " if len(statements) > 1 else ""
            started = time.perf_counter()
            try:
                cursor = self.con.execute(statement)
                result = Result.of(cursor)
                if result is not None and sink is None and self.output is not None and self.fmt == "parquet":
                    self._write_parquet_file(result)  # .output FILE + parquet: the file holds this result
                elif result is not None:
                    write(result, self.fmt, sink or self._sink(), self.max_rows)
            except duckdb.Error as exc:
                self._error(label + error_line(exc))
                ok = False
            except OutputError as exc:
                self._error(label + str(exc))
                ok = False
            except OSError as exc:
                self._error(f"{label}cannot write the result: {exc.strerror or exc}")
                ok = False
            except Exception as exc:  # noqa: BLE001 - a result no writer can take (pyarrow ...): one line, go on
                self._error(f"{label}{type(exc).__name__}: {error_line(exc)}")
                ok = False
            if self.timer:
                self.stdout.write(f"Run Time: {time.perf_counter() - started:.3f} s\n")
                self.stdout.flush()
        if not ok:
            self.failed += 1
        return ok

    # ------------------------------------------------------------ dot-commands

    def dot(self, line: str) -> Optional[int]:
        """Runs one dot-command; returns an exit code when it ends the session."""
        command, _, rest = line.strip().partition(" ")
        arg = rest.strip()
        handlers: dict[str, Callable[[str], Optional[int]]] = {
            ".quit": lambda a: EXIT_OK, ".exit": lambda a: EXIT_OK, ".q": lambda a: EXIT_OK,
            ".help": self._help, ".tables": self._tables, ".schema": self._schema, ".describe": self._describe,
            ".mode": self._mode, ".format": self._mode, ".timer": self._timer, ".output": self._output,
            ".maxrows": self._maxrows,
        }
        handler = handlers.get(command.lower())
        if handler is None:
            self._error(f"unknown command {command!r}; .help lists them")
            self.failed += 1
            return None
        return handler(arg)

    def _help(self, arg: str) -> None:
        self.stdout.write(HELP.format(formats=" | ".join(FORMATS), fmt=self.fmt, timer="on" if self.timer else "off",
                                      max_rows=self.max_rows))

    def _say(self, text: str) -> None:
        self.stdout.write(text + "\n")
        self.stdout.flush()

    def _mode(self, arg: str) -> None:
        if not arg:
            self._say(f"current format: {self.fmt} (one of {', '.join(FORMATS)})")
        elif arg.lower() in FORMATS:
            self.fmt = arg.lower()
        else:
            self._error(f"unknown format {arg!r}: one of {', '.join(FORMATS)}")
            self.failed += 1

    def _timer(self, arg: str) -> None:
        if arg.lower() in ("on", "off"):
            self.timer = arg.lower() == "on"
        else:
            self._error(".timer on|off")
            self.failed += 1

    def _maxrows(self, arg: str) -> None:
        if arg.isdigit():
            self.max_rows = int(arg)
        else:
            self._error(".maxrows N (0 = all)")
            self.failed += 1

    def _output(self, arg: str) -> None:
        self.close()
        if arg in ("", "stdout"):
            self.output = None
            return
        path = Path(arg.strip("'\"")).expanduser()
        refusal = getattr(self.con, "refuse_output", lambda _path: None)(path)  # never onto the data itself
        if refusal:
            self._error(refusal)
            self.failed += 1
            return
        try:
            with open(path, "a", encoding="utf-8"):
                pass
        except OSError as exc:
            self._error(f"cannot write {path}: {exc.strerror or exc}")
            self.failed += 1
            return
        self.output = path

    def _like(self, pattern: str) -> str:
        return "'" + (pattern or "%").replace("'", "''") + "'"

    def _relations(self) -> str:
        return """
            SELECT table_name AS name, 'table' AS kind, comment, sql FROM duckdb_tables()
            WHERE database_name = current_database() AND schema_name = current_schema() AND NOT internal
            UNION ALL
            SELECT view_name, 'view', comment, sql FROM duckdb_views()
            WHERE database_name = current_database() AND schema_name = current_schema() AND NOT internal"""

    def _tables(self, arg: str) -> None:
        self._show(f"SELECT name, kind, coalesce(comment, '') AS description FROM ({self._relations()}) "
                   f"WHERE name LIKE {self._like(arg)} ORDER BY kind, name", fmt="table", max_rows=0)

    def _schema(self, arg: str) -> None:
        import duckdb

        try:
            rows = self.con.execute(
                f"SELECT sql FROM ({self._relations()}) WHERE name LIKE {self._like(arg)} ORDER BY kind, name"
            ).fetchall()
        except duckdb.Error as exc:
            self._error(error_line(exc))
            self.failed += 1
            return
        if not rows:
            self._error(f"no table or view matches {arg!r}")
            self.failed += 1
            return
        for (sql,) in rows:
            text = (sql or "").strip()
            self.stdout.write(text + ("" if text.endswith(";") else ";") + "\n")
        self.stdout.flush()

    def _describe(self, arg: str) -> None:
        if not arg:
            self._error(".describe NAME")
            self.failed += 1
            return
        name = "'" + arg.replace("'", "''") + "'"
        self._show(
            "SELECT column_name AS column, data_type AS type, coalesce(comment, '') AS description "
            "FROM duckdb_columns() WHERE database_name = current_database() AND schema_name = current_schema() "
            f"AND table_name = {name} ORDER BY column_index",
            fmt="table", max_rows=0, empty=f"no table or view named {arg!r}",
        )

    def _show(self, query: str, fmt: str, max_rows: int, empty: Optional[str] = None) -> None:
        import duckdb

        try:
            cursor = self.con.execute(query)
            result = Result.of(cursor)
            if result is None:
                return
            if empty is not None:
                rows = cursor.fetchall()
                if not rows:
                    self._error(empty)
                    self.failed += 1
                    return
                cursor = self.con.execute(query)
                result = Result.of(cursor)
            write(result, fmt, Sink.stdout(self.stdout), max_rows)  # type: ignore[arg-type]
        except duckdb.Error as exc:
            self._error(error_line(exc))
            self.failed += 1

    # ------------------------------------------------------------ scripts and the prompt

    def run_script(self, lines: Iterable[str]) -> int:
        """Piped stdin: SQL and dot-commands line by line, as the prompt would take them."""
        buffer: list[str] = []
        for line in lines:
            code = self._take(line.rstrip("\n"), buffer)
            if code is not None:
                return code
        if buffer and _has_code("\n".join(buffer)):
            self.run_sql("\n".join(buffer))
        return EXIT_SQL if self.failed else EXIT_OK

    def _take(self, line: str, buffer: list[str]) -> Optional[int]:
        if not buffer and line.lstrip().startswith("."):
            return self.dot(line)
        if not buffer and not line.strip():
            return None
        buffer.append(line)
        text = "\n".join(buffer)
        if is_complete(text):
            buffer.clear()
            self.run_sql(text)
        return None

    def prompt(self, read: Callable[[str], str], banner: str = "") -> int:
        """The interactive loop. Never ends on an error: only .quit, .exit or end of input."""
        if banner:
            self._say(banner)
        buffer: list[str] = []
        while True:
            try:
                line = read("cxj> " if not buffer else "...> ")
            except EOFError:
                self._say("")
                return EXIT_OK
            except KeyboardInterrupt:
                self._say("^C")
                buffer.clear()
                continue
            try:
                code = self._take(line, buffer)
                if code is not None:
                    return code
            except KeyboardInterrupt:
                self._error("interrupted")
                buffer.clear()
            except Exception as exc:  # noqa: BLE001 - never leave the prompt on an error
                self._error(error_line(exc))
                buffer.clear()
