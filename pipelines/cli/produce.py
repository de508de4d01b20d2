"""Replay an export of contract v1 events into Kafka (backfill history).

  cxj produce --from events.jsonl
  cxj produce --from export-2026-03.jsonl.gz --bootstrap-servers kafka-1:9092
  zcat part-*.gz | cxj produce --from -

The file holds one JSON event per line (optionally gzipped, recognised by content). Each
event goes to the topic of its event_type (ticket.* -> tickets, chat.* -> chats,
survey.responded -> surveys), keyed by customer_id, exactly as exported. A progress bar
runs on a terminal.

Lines that cannot be sent are reported with their line number and reason: not_utf8,
not_json, too_deep (nested too deeply to parse), not_object, unknown_event_type,
invalid:<reason> (the line would be a dead letter in the pipeline: invalid:schema_violation,
invalid:bad_timestamp, ...; checked unless --no-validate), too_large (over the producer's
request limit) and send_failed (the broker did not accept it). Blank lines are skipped. One
bad line never stops the others: every line read is either sent or rejected.
--rejects FILE writes every rejected line with its reason as JSONL, to fix and replay.

Replaying is safe to repeat: the pipeline counts each event_id once, so after a failure
just run the same command again.

Exit codes: 0 every line sent; 1 some lines rejected (the others were sent); 2 usage error;
3 nothing could be done, some sends failed, or the file is cut short (file unreadable, broker
unreachable, topics missing, a truncated or corrupt .gz: the lines before the damage are sent and
counted, the error line says after which line it stopped).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

from pipelines.kafka.settings import add_kafka_arguments, settings_from_args, topics_from_args

log = logging.getLogger("cxj.produce")

EXIT_OK = 0
EXIT_REJECTED = 1
EXIT_FAILED = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="source", required=True, metavar="FILE",
                        help="JSONL export of contract events, plain or gzipped; - reads stdin")
    parser.add_argument("--no-validate", dest="validate", action="store_false",
                        help="send every line with a known event_type; invalid events then become dead letters "
                             "in the pipeline instead of being reported here")
    parser.add_argument("--dry-run", action="store_true", help="check and count the lines, send nothing")
    parser.add_argument("--rejects", type=Path, metavar="FILE", help="write rejected lines with their reasons here (JSONL)")
    parser.add_argument("--show", type=int, default=20, metavar="N",
                        help="rejected lines listed in the report (default %(default)s; all go to --rejects)")
    parser.add_argument("--create-topics", action="store_true", help="create missing event topics instead of failing")
    parser.add_argument("--partitions", type=int, default=3, help="partitions for --create-topics (default %(default)s)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    add_kafka_arguments(parser)


def main(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from pipelines.kafka.file_to_topic import backfill
    from pipelines.kafka.topics import ensure_topics, missing_topics

    source = str(args.source)
    if source != "-" and not Path(source).is_file():
        log.error("cannot read %s: no such file", source)
        return EXIT_FAILED
    rejects_out = None
    if args.rejects is not None:
        try:  # before sending anything: a rejects file that cannot be written is found out first
            rejects_out = open(args.rejects, "w", encoding="utf-8")
        except OSError as exc:
            log.error("cannot write the rejects file %s: %s; nothing was sent", args.rejects, exc.strerror or exc)
            return EXIT_FAILED
    settings = settings_from_args(args)
    topics = topics_from_args(args)
    try:
        if not args.dry_run:
            missing = missing_topics(settings, topics)
            if missing and args.create_topics:
                ensure_topics(settings, missing, args.partitions)
                log.info("created topics %s", ", ".join(missing))
            elif missing:
                log.error("topics %s do not exist on %s (create them, or pass --create-topics)",
                          ", ".join(missing), settings.bootstrap_servers)
                return EXIT_FAILED
        report = backfill(source, settings, topics, validate=args.validate, dry_run=args.dry_run,
                          progress=args.progress and not getattr(args, "quiet", False))
    except OSError as exc:
        log.error("cannot read %s: %s", source, exc)
        return EXIT_FAILED
    except Exception as exc:  # broker unreachable, authentication, ...: one line for the user
        log.error("produce failed: %s: %s", type(exc).__name__, exc)
        return EXIT_FAILED

    rejects_error = None
    if rejects_out is not None:
        try:
            with rejects_out:
                for r in report.rejected:
                    rejects_out.write(r.to_json() + "\n")
        except OSError as exc:  # e.g. a full disk: the lines were sent already, the list is incomplete
            rejects_error = exc
    for r in report.rejected[: max(0, args.show)]:
        print(r.describe(), file=sys.stderr)
    if len(report.rejected) > args.show:
        print(f"... and {len(report.rejected) - args.show} more rejected lines"
              + (f" (all in {args.rejects})" if args.rejects else " (use --rejects FILE to keep them all)"),
              file=sys.stderr)
    counts = ", ".join(f"{stream} {n}" for stream, n in sorted(report.by_stream.items())) or "none"
    verb = "would send" if args.dry_run else "sent"
    log.info("%s %d of %d lines (%s) in %.1fs; rejected %d%s", verb,
             sum(report.by_stream.values()) if args.dry_run else report.sent, report.lines, counts,
             report.seconds, len(report.rejected), f", skipped {report.blank} blank" if report.blank else "")
    if rejects_error is not None:
        log.error("cannot write the rejects file %s: %s (the %d rejected lines are not all in it; the summary above "
                  "is complete)", args.rejects, rejects_error.strerror or rejects_error, len(report.rejected))
        return EXIT_FAILED
    if report.cut_short is not None:
        log.error("%s %s: the %d lines before it were read (%s %d, rejected %d) and nothing after it",
                  source, report.cut_short.describe(), report.lines, verb,
                  sum(report.by_stream.values()) if args.dry_run else report.sent, len(report.rejected))
        return EXIT_FAILED
    if report.send_failures:
        log.error("%d lines were not accepted by the broker; running the same command again is safe",
                  len(report.send_failures))
        return EXIT_FAILED
    return EXIT_REJECTED if report.rejected else EXIT_OK
