"""How a run is configured and stopped: kept free of Beam imports so the CLI starts fast."""
from __future__ import annotations

import logging
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from pipelines.config.paths import DEFAULT_DB
from pipelines.kafka.settings import DEFAULT_TOPICS, KafkaSettings
from transforms.journeys import DEFAULT_REPEAT_WINDOW_S
from transforms.metrics_config import MetricsConfig
from transforms.parse import ParseLimits

log = logging.getLogger("cxj.run")

# A batch holds its message values many times over (raw, decoded, parsed, hashed, shuffled,
# written to batch files, loaded): measured peak RSS is about 260 MiB + 14 x the budget, so 32 MiB of values
# keeps a run near 700 MiB whatever the message sizes (docs/reliability.md, "Memory budget").
DEFAULT_MAX_BATCH_BYTES = 32 * 1024 * 1024


@dataclass
class RunConfig:
    db: Path = DEFAULT_DB
    settings: KafkaSettings = field(default_factory=KafkaSettings)
    topics: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_TOPICS))
    max_batch_events: int = 50_000
    max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES  # message values read per batch at most (memory bound)
    repeat_window_s: float = DEFAULT_REPEAT_WINDOW_S
    poll_interval_s: float = 1.0
    read_timeout_s: float = 30.0
    broker_timeout_s: float = 30.0  # --once: give up when the broker stays unreachable this long
    limits: ParseLimits = field(default_factory=ParseLimits)
    beam_args: Sequence[str] = ()
    metrics_port: Optional[int] = None  # serve Prometheus metrics on this port
    metrics_host: str = "127.0.0.1"  # bind address of the metrics endpoint: this machine unless told otherwise
    commit_group: Optional[str] = None  # mirror landed offsets into this consumer group for lag tools
    stall_after_s: float = 300.0  # /healthz says 503 when the run loop shows no sign of life this long
    check: bool = False  # run the data-quality suite after every batch
    lock_timeout_s: float = 10.0  # wait this long for another process's lock on --db at start
    # service-metric settings: calendars, durable days, repeat-contact window (--calendars FILE);
    # not the Prometheus endpoint (metrics_port) nor Beam's counters
    service_metrics: MetricsConfig = field(default_factory=MetricsConfig)
    # shared lake (pipelines/storage/shared_lake.py): where to publish, as whom, which partitions
    lake: Optional[object] = None  # a pipelines.storage.lake_target.LakeTarget; None: local replica
    writer_id: Optional[str] = None
    partitions: Optional[frozenset[int]] = None  # partition indices of every topic to read; None: all

    @property
    def stream_of_topic(self) -> dict[str, str]:
        return {topic: stream for stream, topic in self.topics.items()}

    @property
    def batch_files_root(self) -> Path:
        """Where each batch's stages hand their files to the next (batch-<id>/, transforms/batch_files.py)."""
        return self.db.parent / f".{self.db.name}.batches"


class Stopper:
    """Turns SIGINT/SIGTERM into a flag so the current batch finishes before exiting."""

    def __init__(self) -> None:
        self.stopping = False

    def install(self) -> None:
        signal.signal(signal.SIGINT, self._stop)
        signal.signal(signal.SIGTERM, self._stop)

    def _stop(self, signum: int, _frame: object) -> None:
        if self.stopping:  # a second Ctrl-C means now
            raise KeyboardInterrupt
        self.stopping = True
        log.info("received %s: finishing the current batch, then exiting", signal.Signals(signum).name)

    def sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < end:
            time.sleep(min(0.1, end - time.monotonic()))
