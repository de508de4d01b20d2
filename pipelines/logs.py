"""Log setup shared by every command: readable lines for people, JSON lines for services."""
from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class _DropKnownNoise(logging.Filter):
    """Beam warns about optional Google Cloud client libraries at import; irrelevant here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("apitools not found")


def quiet_known_noise() -> None:
    """Installed before anything imports Beam, whose import-time warning bypasses our handler."""
    logging.getLogger().addFilter(_DropKnownNoise())


def configure(quiet: bool = False, log_format: str = "text", verbose: bool = False) -> None:
    """Our own loggers at INFO (WARNING with --quiet); Beam and kafka-python only when they warn."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S"))
    handler.addFilter(_DropKnownNoise())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("cxj").setLevel(logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO))
    for noisy in ("apache_beam", "kafka"):
        # kafka-python logs every refused connection at ERROR; our own messages say what failed
        logging.getLogger(noisy).setLevel(logging.INFO if verbose else logging.CRITICAL)
