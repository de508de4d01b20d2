"""The one writer of `cxj sql` results: every format, every DuckDB column type, stdout or a file.

Why one writer of our own instead of DuckDB's COPY or polars: the reader connection may not write
files (external access is off for readers), polars' CSV writer refuses nested columns, and the
two routes formatted timestamps differently. Here a result is streamed from the cursor once and
rendered by the same code whether it goes to a terminal, a pipe or ``--output FILE``:

* text formats (table, csv, json, jsonl, markdown, line) render values with `cell_text` /
  `json_value`: lists, structs and maps as JSON, timestamps as ISO 8601 with their UTC offset,
  NULL as NULL (empty in CSV, null in JSON), BLOBs escaped, control characters escaped in the
  human formats so a value can never move the cursor or inject terminal escapes;
* parquet goes through Arrow (types kept exactly), to a file or to a binary stdout;
* the table format rounds floats for reading (2 decimals from 1 up, 4 significant digits below)
  and fits the terminal when it writes to one; the machine formats keep full precision.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
import unicodedata
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Optional, Sequence, TextIO

FORMATS = ("table", "csv", "json", "jsonl", "markdown", "line", "parquet")
FETCH_ROWS = 2048
NUMERIC_TYPES = {
    "TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT",
    "UHUGEINT", "FLOAT", "DOUBLE", "DECIMAL", "BIGNUM", "VARINT",
}
MIN_COLUMN_WIDTH = 6


class OutputError(RuntimeError):
    """The result cannot be written where it was asked to go (one line)."""


# ---------------------------------------------------------------- values


def _escape_bytes(data: bytes) -> str:
    return "".join(chr(b) if 32 <= b < 127 and b != 92 else f"\\x{b:02X}" for b in data)


def _escape_controls(text: str) -> str:
    """Makes control characters visible (\\n, \\t, \\x1B ...) so a cell stays on its line."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs"):
            out.append(f"\\x{ord(ch):02X}" if ord(ch) < 256 else f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return "".join(out)


def json_value(value: Any) -> Any:
    """A JSON-serialisable form of any DuckDB value (nested types recursively)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Decimal):
        if not value.is_finite():
            return None
        return int(value) if value == value.to_integral_value() and abs(value) < 2**53 else float(value)
    if isinstance(value, dict):
        return {str(json_value(k)) if not isinstance(k, str) else k: json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_value(v) for v in value]
    return scalar_text(value, datetime_sep="T")


def _interval_text(value: timedelta) -> str:
    seconds = value.total_seconds()
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = f"{int(hours):02d}:{int(minutes):02d}:{secs:09.6f}".rstrip("0").rstrip(".")
    return f"{sign}{int(days)} days {clock}" if days else f"{sign}{clock}"


def cell_text(value: Any) -> str:
    """The text of one value in csv / line / markdown / table (before table rounding)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("nan" if math.isnan(value) else ("inf" if value > 0 else "-inf"))
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(json_value(value), ensure_ascii=False)
    return scalar_text(value, datetime_sep=" ")


def scalar_text(value: Any, datetime_sep: str) -> str:
    """The one text form of a non-numeric scalar, for JSON and the text formats alike. Only the
    separator of date and time differs: ISO 8601's "T" in JSON (what JSON consumers parse),
    a space in csv / line / markdown / table (what SQL tools print)."""
    if isinstance(value, datetime):
        return value.isoformat(sep=datetime_sep)
    if isinstance(value, (date, time)):
        return value.isoformat()
    if isinstance(value, timedelta):
        return _interval_text(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _escape_bytes(bytes(value))
    return str(value)  # str, UUID, and whatever else DuckDB hands over


def rounded_float(value: float) -> str:
    """Floats for people: 2 decimals from 1 up (4.35, 15660.0), 4 significant digits below (0.6667)."""
    if not math.isfinite(value):
        return cell_text(value)
    if value == 0 or abs(value) >= 1:
        return repr(round(value, 2))
    return repr(float(f"{value:.4g}"))


def display_width(text: str) -> int:
    """Terminal columns of ``text``: East Asian wide characters take 2, combining marks 0."""
    if text.isascii():
        return len(text)
    width = 0
    for ch in text:
        if unicodedata.combining(ch):
            continue
        width += 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
    return width


def _truncate(text: str, width: int) -> str:
    if display_width(text) <= width:
        return text
    out, used = [], 0
    for ch in text:
        w = 0 if unicodedata.combining(ch) else (2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1)
        if used + w > width - 1:
            break
        out.append(ch)
        used += w
    return "".join(out) + "…"


def _pad(text: str, width: int, right: bool) -> str:
    gap = " " * max(0, width - display_width(text))
    return gap + text if right else text + gap


# ---------------------------------------------------------------- results


@dataclass
class Result:
    """One statement's result: column names, DuckDB type names, and a cursor to stream rows from."""

    names: list[str]
    types: list[str]
    cursor: Any

    @classmethod
    def of(cls, cursor: Any) -> Optional["Result"]:
        """None for a statement without a result (SET, BEGIN, USE ...: DuckDB answers those
        with a single BOOLEAN column named Success)."""
        description = cursor.description
        if not description:
            return None
        if len(description) == 1 and description[0][0] == "Success" and str(description[0][1]) == "BOOLEAN":
            return None
        return cls([str(d[0]) for d in description], [str(d[1]) for d in description], cursor)

    def rows(self, limit: Optional[int] = None) -> Iterator[tuple]:
        fetched = 0
        while limit is None or fetched < limit:
            size = FETCH_ROWS if limit is None else min(FETCH_ROWS, limit - fetched)
            chunk = self.cursor.fetchmany(size)
            if not chunk:
                return
            fetched += len(chunk)
            yield from chunk

    def numeric(self, index: int) -> bool:
        return self.types[index].split("(")[0].upper() in NUMERIC_TYPES

    def unique_names(self) -> list[str]:
        """Column names made unique (JSON objects cannot hold the same key twice)."""
        seen: dict[str, int] = {}
        out = []
        for name in self.names:
            seen[name] = seen.get(name, 0) + 1
            out.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
        return out


# ---------------------------------------------------------------- sinks


@dataclass
class Sink:
    """Where results go: a text stream (stdout or a file), with a binary side for parquet."""

    text: TextIO
    binary: Optional[BinaryIO] = None
    is_terminal: bool = False
    terminal_width: int = 0
    path: Optional[Path] = None
    _temp: Optional[Path] = field(default=None, repr=False)
    parquet_results: int = 0  # a Parquet file holds one table: a second result is refused

    @classmethod
    def stdout(cls, stream: TextIO) -> "Sink":
        terminal = bool(getattr(stream, "isatty", lambda: False)())
        width = 0
        if terminal:
            try:
                width = os.get_terminal_size(stream.fileno()).columns
            except (OSError, ValueError, AttributeError):
                width = 0
        return cls(stream, getattr(stream, "buffer", None), terminal, width)

    @classmethod
    def file(cls, path: Path) -> "Sink":
        """Writes to a temporary file next to ``path``; `commit` renames it into place, so a
        failed query never leaves an empty or half-written file behind."""
        path = Path(path)
        try:
            fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent if str(path.parent) else ".")
        except OSError as exc:
            raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
        binary = os.fdopen(fd, "wb")
        text = io.TextIOWrapper(binary, encoding="utf-8", newline="", write_through=True)
        return cls(text, binary, False, 0, path, Path(temp))

    def commit(self) -> None:
        if self._temp is None:
            self.text.flush()
            return
        self.text.flush()
        self.text.close()
        os.replace(self._temp, self.path)  # type: ignore[arg-type]
        self._temp = None

    def discard(self) -> None:
        if self._temp is None:
            return
        try:
            self.text.close()
        finally:
            self._temp.unlink(missing_ok=True)
            self._temp = None


# ---------------------------------------------------------------- writers


def write(result: Result, fmt: str, sink: Sink, max_rows: int = 0) -> int:
    """Writes ``result`` in ``fmt`` to ``sink``; returns the rows written."""
    if fmt not in FORMATS:
        raise OutputError(f"unknown format {fmt!r} (one of {', '.join(FORMATS)})")
    writer = {
        "table": _table, "csv": _csv, "json": _json, "jsonl": _jsonl, "markdown": _markdown,
        "line": _line, "parquet": _parquet,
    }[fmt]
    count = writer(result, sink, max_rows)
    sink.text.flush()
    return count


def _csv(result: Result, sink: Sink, max_rows: int) -> int:
    out = csv.writer(sink.text, lineterminator="\n")
    out.writerow(result.names)
    count = 0
    for row in result.rows():
        out.writerow(["" if v is None else cell_text(v) for v in row])
        count += 1
    return count


def _json(result: Result, sink: Sink, max_rows: int) -> int:
    names = result.unique_names()
    count = 0
    sink.text.write("[")
    for row in result.rows():
        sink.text.write(",\n" if count else "\n")
        sink.text.write(json.dumps(dict(zip(names, (json_value(v) for v in row))), ensure_ascii=False))
        count += 1
    sink.text.write("\n]\n" if count else "]\n")
    return count


def _jsonl(result: Result, sink: Sink, max_rows: int) -> int:
    names = result.unique_names()
    count = 0
    for row in result.rows():
        sink.text.write(json.dumps(dict(zip(names, (json_value(v) for v in row))), ensure_ascii=False) + "\n")
        count += 1
    return count


def _line(result: Result, sink: Sink, max_rows: int) -> int:
    names = [_escape_controls(n) for n in result.names]
    width = max((display_width(n) for n in names), default=0)
    count = 0
    for row in result.rows():
        if count:
            sink.text.write("\n")
        for name, value in zip(names, row):
            sink.text.write(f"{_pad(name, width, True)} = {_escape_controls(cell_text(value))}\n")
        count += 1
    return count


def _markdown_cell(text: str) -> str:
    return _escape_controls(text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", "<br>"))


def _markdown(result: Result, sink: Sink, max_rows: int) -> int:
    sink.text.write("| " + " | ".join(_markdown_cell(n) for n in result.names) + " |\n")
    sink.text.write("|" + "|".join("---:" if result.numeric(i) else "---" for i in range(len(result.names))) + "|\n")
    count = 0
    for row in result.rows():
        sink.text.write("| " + " | ".join(_markdown_cell(cell_text(v)) for v in row) + " |\n")
        count += 1
    return count


def _parquet(result: Result, sink: Sink, max_rows: int) -> int:
    import pyarrow.parquet as pq

    if sink.binary is None or sink.is_terminal:
        raise OutputError("parquet is binary: write it with --output FILE (or .output FILE), or redirect stdout")
    if sink.parquet_results:
        raise OutputError("parquet holds one result per file: this statement's result was not written")
    sink.parquet_results += 1
    reader = result.cursor.fetch_record_batch(FETCH_ROWS * 16)
    sink.text.flush()
    schema = _parquet_schema(reader.schema)
    count = 0
    with pq.ParquetWriter(sink.binary, schema) as writer:
        for batch in reader:
            writer.write_batch(_parquet_batch(batch, schema))
            count += batch.num_rows
    sink.binary.flush()
    return count


def _parquet_writable(arrow_type: Any) -> bool:
    """False for Arrow types Parquet cannot store (intervals, unions), also inside nested types."""
    import pyarrow as pa

    if pa.types.is_interval(arrow_type) or pa.types.is_union(arrow_type):
        return False
    if pa.types.is_struct(arrow_type):
        return all(_parquet_writable(arrow_type.field(i).type) for i in range(arrow_type.num_fields))
    if pa.types.is_map(arrow_type):
        return _parquet_writable(arrow_type.key_type) and _parquet_writable(arrow_type.item_type)
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type) or pa.types.is_fixed_size_list(arrow_type):
        return _parquet_writable(arrow_type.value_type)
    return True


def _parquet_schema(schema: Any) -> Any:
    """The schema to write: columns Parquet cannot hold become text (as in the csv format)."""
    import pyarrow as pa

    return pa.schema([f if _parquet_writable(f.type) else pa.field(f.name, pa.string()) for f in schema])


def _arrow_text(value: Any) -> Optional[str]:
    if value is None:
        return None
    if hasattr(value, "months") and hasattr(value, "nanoseconds"):  # pyarrow MonthDayNano interval
        months, days, nanos = value.months, value.days, value.nanoseconds
        clock = _interval_text(timedelta(microseconds=nanos / 1000))
        parts = [f"{months} months"] if months else []
        parts += [f"{days} days"] if days else []
        return " ".join(parts + [clock]) if nanos or not parts else " ".join(parts)
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(json_value(_arrow_plain(value)), ensure_ascii=False)
    return cell_text(value)


def _arrow_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _arrow_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_arrow_plain(v) for v in value]
    if hasattr(value, "months") and hasattr(value, "nanoseconds"):
        return _arrow_text(value)
    return value


def _parquet_batch(batch: Any, schema: Any) -> Any:
    import pyarrow as pa

    if batch.schema.equals(schema):
        return batch
    columns = [
        column if column.type == field_.type else pa.array([_arrow_text(v) for v in column.to_pylist()], pa.string())
        for column, field_ in zip(batch.columns, schema)
    ]
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def _table(result: Result, sink: Sink, max_rows: int) -> int:
    """A box table like the DuckDB CLI's: names, types, rows; numbers right-aligned."""
    rows = list(result.rows(None if not max_rows else max_rows + 1))
    more = bool(max_rows) and len(rows) > max_rows
    rows = rows[:max_rows] if more else rows
    columns = len(result.names)
    cells = [
        [
            rounded_float(v) if isinstance(v, float) else _escape_controls(cell_text(v))
            for v in row
        ]
        for row in rows
    ]
    header = [_escape_controls(n) for n in result.names]
    types = [t.lower() for t in result.types]
    widths = [
        max([display_width(header[i]), display_width(types[i])] + [display_width(r[i]) for r in cells])
        for i in range(columns)
    ]
    if sink.is_terminal and sink.terminal_width:
        _fit(widths, sink.terminal_width)
    right = [result.numeric(i) for i in range(columns)]

    def line(left: str, mid: str, end: str) -> str:
        return left + mid.join("─" * (w + 2) for w in widths) + end + "\n"

    def cells_line(values: Sequence[str], align: Sequence[bool]) -> str:
        parts = [_pad(_truncate(v, w), w, a) for v, w, a in zip(values, widths, align)]
        return "│ " + " │ ".join(parts) + " │\n"

    out = [line("┌", "┬", "┐"), cells_line(header, [False] * columns), cells_line(types, [False] * columns),
           line("├", "┼", "┤")]
    out.extend(cells_line(r, right) for r in cells)
    out.append(line("└", "┴", "┘"))
    count = len(rows)
    out.append(f"{count} row{'s' if count != 1 else ''}\n" if not more else
               f"(first {max_rows} rows shown; --max-rows 0 shows all)\n")
    sink.text.write("".join(out))
    return count


def _fit(widths: list[int], terminal_width: int) -> None:
    """Narrows the widest columns until the table fits (each keeps MIN_COLUMN_WIDTH)."""
    def total() -> int:
        return sum(w + 3 for w in widths) + 1

    while total() > terminal_width:
        widest = max(range(len(widths)), key=lambda i: widths[i])
        if widths[widest] <= MIN_COLUMN_WIDTH:
            return
        widths[widest] -= max(1, min(widths[widest] - MIN_COLUMN_WIDTH, total() - terminal_width))
