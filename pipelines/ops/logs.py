"""Log setup shared by every command: readable lines for people, JSON lines for services.

Both formats carry a full timestamp with date and time zone (a log line without a date is
useless the morning after). JSON lines carry a message's figures as fields of their own,
passed with ``log.info(..., extra={"fields": {...}})``, so log shippers can graph and alert
on them without parsing the message text.
"""
from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any

_RESERVED = {"ts", "level", "logger", "message", "exc"}


def _timestamp(created: float) -> str:
    """ISO 8601 in UTC with milliseconds and an explicit zone: 2026-12-01T06:28:27.123+00:00."""
    return datetime.fromtimestamp(created, timezone.utc).isoformat(timespec="milliseconds")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update({k: v for k, v in fields.items() if k not in _RESERVED})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802 (logging's name)
        return _timestamp(record.created)


class _DropKnownNoise(logging.Filter):
    """Beam warns about optional Google Cloud client libraries at import; irrelevant here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("apitools not found")


def quiet_known_noise() -> None:
    """Installed before anything imports Beam, whose import-time warning bypasses our handler."""
    logging.getLogger().addFilter(_DropKnownNoise())


class _LibraryNoise(logging.Filter):
    """Beam's and kafka-python's own lines reach the console only with --verbose (or when critical).

    kafka-python logs every refused connection at ERROR; our own messages say what failed,
    with the cause taken from those lines (pipelines.kafka.settings.failure_cause), so the
    loggers stay at WARNING for that recorder while the console leaves them out.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        library = record.name.split(".", 1)[0] in ("kafka", "apache_beam")
        return not library or record.levelno >= logging.CRITICAL


def configure(quiet: bool = False, log_format: str = "text", verbose: bool = False) -> None:
    """Our own loggers at INFO (WARNING with --quiet); Beam and kafka-python only with --verbose."""
    from pipelines.kafka.settings import install_cause_recorder

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(_DropKnownNoise())
    if not verbose:
        handler.addFilter(_LibraryNoise())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("cxj").setLevel(logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO))
    for library in ("apache_beam", "kafka"):
        logging.getLogger(library).setLevel(logging.INFO if verbose else logging.WARNING)
    install_cause_recorder()
