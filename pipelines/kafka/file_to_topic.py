"""Backfill: replay a JSONL export of contract events into the event topics.

Each line of the export is one contract v1 event. It is routed by its ``event_type`` to the
tickets, chats or surveys topic, keyed by ``customer_id`` (as the contract requires), and sent
byte for byte as exported (unknown fields and the original UTC offsets are kept). Lines that
cannot be sent are reported with their line number and reason instead; nothing is dropped
silently.

By default each line is checked with the same parser the pipeline uses, so a line the pipeline
would dead-letter (schema violation, bad timestamp, ...) is reported here with its line number
and not sent. With ``validate=False`` only routing is checked and the pipeline's dead-letter
table receives the invalid events.

Replaying is safe to repeat: the pipeline counts every event_id once, so sending an export
twice (or after a partial failure) lands nothing twice.
"""
from __future__ import annotations

import gzip
import io
import json
import logging
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Optional

from pipelines.kafka.settings import KafkaSettings
from transforms.events import STREAM_OF_TYPE
from transforms.parse import NOT_JSON, NOT_OBJECT, NOT_UTF8, TOO_DEEP, TOO_LARGE, UNKNOWN_EVENT_TYPE, ParseLimits, SourceRef, parse_record

log = logging.getLogger("cxj.produce")

GZIP_MAGIC = b"\x1f\x8b"

# Reasons a line is not sent (stable codes, shown in the report): the pipeline's dead-letter codes
# (transforms/parse.py) where the cause is the same, too_deep meaning nested deeper than Python's
# JSON parser can follow and too_large larger than the producer may send (only with --no-validate),
# and these of the producer's own:
UNREADABLE = "unreadable"  # anything else that made one line impossible to classify
INVALID = "invalid"  # prefix: the pipeline's dead-letter reason follows, e.g. invalid:schema_violation
SEND_FAILED = "send_failed"

READ_CHUNK = 64 * 1024


class ExportCutShort(Exception):
    """The export stopped being readable part-way (a truncated or corrupt gzip, a read error).

    Raised by read_lines after every complete line before the damage was yielded, so the caller
    can still flush and report exactly what was sent.
    """

    def __init__(self, after_line: int, partial_bytes: int, cause: BaseException) -> None:
        self.after_line = after_line
        self.partial_bytes = partial_bytes
        self.cause = cause
        super().__init__(self.describe())

    @property
    def kind(self) -> str:
        if isinstance(self.cause, EOFError):
            return "truncated (the compressed data ends before its end marker)"
        if isinstance(self.cause, (gzip.BadGzipFile, zlib.error)):
            return "corrupt (not valid gzip data)"
        return "unreadable"

    def describe(self) -> str:
        partial = f"; an incomplete line of {self.partial_bytes} bytes after it was not sent" if self.partial_bytes else ""
        cause = str(self.cause).splitlines()[0] if str(self.cause) else type(self.cause).__name__
        return f"is {self.kind} after line {self.after_line}{partial} ({cause})"


@dataclass(frozen=True)
class Rejected:
    line: int
    reason: str
    detail: str
    raw: bytes = b""

    def describe(self) -> str:
        return f"line {self.line}: {self.reason}: {self.detail}"

    def to_json(self) -> str:
        return json.dumps({"line": self.line, "reason": self.reason, "detail": self.detail,
                           "raw": self.raw.decode("utf-8", errors="replace")})


@dataclass
class BackfillReport:
    lines: int = 0          # non-blank lines read
    blank: int = 0          # blank lines, skipped
    sent: int = 0           # acknowledged by the broker
    by_stream: dict[str, int] = field(default_factory=dict)
    rejected: list[Rejected] = field(default_factory=list)
    seconds: float = 0.0
    cut_short: Optional[ExportCutShort] = None  # the file ended in damage after the lines counted here

    @property
    def send_failures(self) -> list[Rejected]:
        return [r for r in self.rejected if r.reason == SEND_FAILED]


def open_export(path: str | Path) -> tuple[IO[bytes], Callable[[], int], int]:
    """(binary line stream, position in the file in bytes, file size) for a plain or gzipped
    export; gzip is recognised by its magic bytes, whatever the file name. ``-`` is stdin."""
    if str(path) == "-":
        raw: IO[bytes] = sys.stdin.buffer
        size = 0
    else:
        raw = open(path, "rb")
        size = Path(path).stat().st_size
    peek = raw.peek(2)[:2] if hasattr(raw, "peek") else b""
    if peek == GZIP_MAGIC:
        stream: IO[bytes] = gzip.GzipFile(fileobj=raw)
    else:
        stream = raw if hasattr(raw, "peek") else io.BufferedReader(raw)  # type: ignore[arg-type]

    def position() -> int:
        try:
            return raw.tell()
        except (OSError, ValueError):
            return 0

    return stream, position, size


def classify(number: int, raw: bytes, validate: bool, now_us: int,
             limits: ParseLimits) -> tuple[Optional[str], Optional[bytes], Optional[Rejected]]:
    """One export line -> (stream, key, None) to send, or (None, None, Rejected)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, None, Rejected(number, NOT_UTF8, str(exc), raw)
    try:
        doc = json.loads(text)
    except RecursionError:
        return None, None, Rejected(number, TOO_DEEP, "JSON nesting too deep to parse", raw)
    except ValueError as exc:
        return None, None, Rejected(number, NOT_JSON, str(exc), raw)
    if not isinstance(doc, dict):
        return None, None, Rejected(number, NOT_OBJECT, f"JSON {type(doc).__name__}, expected an object", raw)
    event_type = doc.get("event_type")
    stream = STREAM_OF_TYPE.get(event_type) if isinstance(event_type, str) else None
    if stream is None:
        return None, None, Rejected(number, UNKNOWN_EVENT_TYPE, f"event_type {str(event_type)[:80]!r} is not a contract v1 type", raw)
    if validate:
        kind, row = parse_record(raw, SourceRef("export", 0, number), stream, now_us, limits)
        if kind == "dead":
            return None, None, Rejected(number, f"{INVALID}:{row['reason']}", row["detail"], raw)
    customer = doc.get("customer_id")
    key = customer.encode("utf-8") if isinstance(customer, str) else None
    return stream, key, None


def read_lines(stream: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    """(line number, content without the line end) for every line, blank ones included.

    Reads in chunks with read1 rather than iterating lines: a truncated gzip raises on the read
    that hits the damage, and line iteration would drop the complete lines decompressed just
    before it. Raises ExportCutShort after yielding every complete line before the damage.
    """
    read = getattr(stream, "read1", stream.read)
    pending = bytearray()
    number = 0
    while True:
        try:
            chunk = read(READ_CHUNK)
        except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as exc:
            raise ExportCutShort(number, len(pending), exc) from exc
        if not chunk:
            break
        searched = len(pending)
        pending += chunk
        start = 0
        while True:
            end = pending.find(b"\n", max(start, searched))
            if end < 0:
                break
            number += 1
            yield number, bytes(pending[start:end]).rstrip(b"\r")
            start = end + 1
        del pending[:start]
    if pending:
        number += 1
        yield number, bytes(pending).rstrip(b"\r")


class Progress:
    """A tqdm bar over the bytes of the export on a terminal; a log line every few seconds otherwise."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.bar = None
        self.total = total
        self.enabled = enabled
        self.last_log = time.monotonic()
        self.done = 0
        if enabled and sys.stderr.isatty():
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total or None, unit="B", unit_scale=True, desc="sending", file=sys.stderr)
            except ImportError:  # tqdm is optional; fall back to log lines
                self.bar = None

    def update(self, position: int, lines: int) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(max(0, position - self.bar.n))
            self.bar.set_postfix(lines=f"{lines:,}", refresh=False)
        elif time.monotonic() - self.last_log >= 5.0:
            self.last_log = time.monotonic()
            share = f" ({100.0 * position / self.total:.0f}%)" if self.total else ""
            log.info("sending: %d lines read%s", lines, share)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def backfill(
    path: str | Path,
    settings: KafkaSettings,
    topics: dict[str, str],
    *,
    validate: bool = True,
    dry_run: bool = False,
    progress: bool = True,
    limits: ParseLimits = ParseLimits(),
    producer_factory: Optional[Callable[[], Any]] = None,
) -> BackfillReport:
    """Sends every sendable line of the export; returns what was sent and what was rejected.

    Raises OSError when the file cannot be read and kafka errors when the broker cannot be
    reached at all; a failure to deliver single messages is reported per line (send_failed).
    """
    started = time.monotonic()
    report = BackfillReport()
    stream, position, size = open_export(path)
    producer = None
    if not dry_run:
        producer = producer_factory() if producer_factory else _producer(settings)
    bar = Progress(size, progress)
    now_us = int(time.time() * 1_000_000)

    def delivered(stream_name: str) -> Callable[[Any], None]:
        def on_success(_metadata: Any) -> None:
            report.sent += 1
            report.by_stream[stream_name] = report.by_stream.get(stream_name, 0) + 1
        return on_success

    def failed(number: int, raw: bytes) -> Callable[[BaseException], None]:
        def on_error(exc: BaseException) -> None:
            report.rejected.append(Rejected(number, SEND_FAILED, f"{type(exc).__name__}: {exc}", raw))
        return on_error

    try:
        try:
            for number, raw in read_lines(stream):
                if not raw.strip():
                    report.blank += 1
                    continue
                report.lines += 1
                try:
                    stream_name, key, rejected = classify(number, raw, validate, now_us, limits)
                except Exception as exc:  # one hostile line must never abort the file
                    stream_name, key = None, None
                    rejected = Rejected(number, UNREADABLE, f"{type(exc).__name__}: {str(exc)[:200]}", raw)
                if rejected is not None:
                    report.rejected.append(rejected)
                elif producer is None:
                    report.by_stream[stream_name] = report.by_stream.get(stream_name, 0) + 1  # type: ignore[index]
                else:
                    _send(producer, topics[stream_name], key, number, raw, report,  # type: ignore[index]
                          delivered(stream_name), failed(number, raw))  # type: ignore[arg-type]
                if number % 1000 == 0:
                    bar.update(position(), report.lines)
        except ExportCutShort as cut:
            report.cut_short = cut  # what was read before the damage is still sent and counted
        if producer is not None:
            producer.flush()
        bar.update(size or position(), report.lines)
    finally:
        bar.close()
        if producer is not None:
            producer.close()
        if stream is not sys.stdin.buffer:
            stream.close()
    if dry_run:
        report.sent = 0
    report.rejected.sort(key=lambda r: r.line)
    report.seconds = time.monotonic() - started
    return report


def _send(producer: Any, topic: str, key: Optional[bytes], number: int, raw: bytes, report: BackfillReport,
          on_success: Callable[[Any], None], on_error: Callable[[BaseException], None]) -> None:
    """Hands one line to the producer; a line too large to ever be sent is a rejection (sending it
    again cannot help), anything else the producer refuses is a send failure (retrying can)."""
    from kafka.errors import MessageSizeTooLargeError

    try:
        future = producer.send(topic, key=key, value=raw)
    except MessageSizeTooLargeError as exc:
        report.rejected.append(Rejected(number, TOO_LARGE, f"{len(raw)} bytes: {exc}", raw))
    except Exception as exc:  # e.g. metadata timeout
        report.rejected.append(Rejected(number, SEND_FAILED, f"{type(exc).__name__}: {exc}", raw))
    else:
        future.add_callback(on_success)
        future.add_errback(on_error)


def _producer(settings: KafkaSettings) -> Any:
    from kafka import KafkaProducer

    return KafkaProducer(
        **settings.client_kwargs(),
        acks="all",
        linger_ms=20,
        batch_size=256 * 1024,
        max_request_size=2 * 1024 * 1024,
        retries=5,
        max_block_ms=30_000,
    )
