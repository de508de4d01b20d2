"""Kafka connection settings shared by every component that talks to the broker.

One place builds kafka-python keyword arguments so that SASL/SSL settings given on the
command line reach producers, consumers and admin clients alike, and so that secrets are
never echoed: ``describe()`` is what logs may print.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from typing import Any

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
DEFAULT_TOPICS: dict[str, str] = {
    "tickets": "cx.tickets",
    "chats": "cx.chats",
    "surveys": "cx.surveys",
}

# Consumer tuning measured on this class of machine (DESIGN fact 6): defaults give ~3.7k msg/s,
# these give ~33k msg/s.
FAST_CONSUMER_SETTINGS: dict[str, Any] = {
    "max_poll_records": 10_000,
    "fetch_max_bytes": 64 * 1024 * 1024,
    "max_partition_fetch_bytes": 16 * 1024 * 1024,
    "fetch_max_wait_ms": 100,
}

_SECRET_KEYS = {"sasl_plain_password", "ssl_password"}


@dataclass(frozen=True)
class KafkaSettings:
    """Where the broker is and how to authenticate; passed through to kafka-python."""

    bootstrap_servers: str = DEFAULT_BOOTSTRAP
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_plain_username: str | None = None
    sasl_plain_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_password: str | None = field(default=None, repr=False)
    request_timeout_ms: int = 30_000

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments accepted by KafkaProducer, KafkaConsumer and KafkaAdminClient."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": [s.strip() for s in self.bootstrap_servers.split(",") if s.strip()],
            "security_protocol": self.security_protocol,
            "request_timeout_ms": self.request_timeout_ms,
        }
        for key in (
            "sasl_mechanism",
            "sasl_plain_username",
            "sasl_plain_password",
            "ssl_cafile",
            "ssl_certfile",
            "ssl_keyfile",
            "ssl_password",
        ):
            value = getattr(self, key)
            if value is not None:
                kwargs[key] = value
        return kwargs

    def describe(self) -> str:
        """A loggable description: never contains a password."""
        shown = {k: v for k, v in self.client_kwargs().items() if k not in _SECRET_KEYS}
        if any(k in self.client_kwargs() for k in _SECRET_KEYS):
            shown["credentials"] = "***"
        return ", ".join(f"{k}={v}" for k, v in shown.items())


def add_kafka_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the connection options every broker-facing command takes."""
    group = parser.add_argument_group("Kafka connection")
    group.add_argument(
        "--bootstrap-servers",
        default=os.environ.get("CXJ_BOOTSTRAP_SERVERS", DEFAULT_BOOTSTRAP),
        help="comma-separated host:port list (env CXJ_BOOTSTRAP_SERVERS; default %(default)s)",
    )
    group.add_argument(
        "--security-protocol",
        default=os.environ.get("CXJ_SECURITY_PROTOCOL", "PLAINTEXT"),
        choices=["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"],
        help="Kafka security protocol (env CXJ_SECURITY_PROTOCOL; default %(default)s)",
    )
    group.add_argument(
        "--sasl-mechanism",
        default=os.environ.get("CXJ_SASL_MECHANISM"),
        choices=[None, "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"],
        help="SASL mechanism (env CXJ_SASL_MECHANISM)",
    )
    group.add_argument(
        "--sasl-username",
        default=os.environ.get("CXJ_SASL_USERNAME"),
        help="SASL user name (env CXJ_SASL_USERNAME)",
    )
    group.add_argument(
        "--ssl-cafile",
        default=os.environ.get("CXJ_SSL_CAFILE"),
        help="CA bundle to verify the brokers (env CXJ_SSL_CAFILE)",
    )
    group.add_argument("--ssl-certfile", default=os.environ.get("CXJ_SSL_CERTFILE"), help="client certificate (env CXJ_SSL_CERTFILE)")
    group.add_argument("--ssl-keyfile", default=os.environ.get("CXJ_SSL_KEYFILE"), help="client key (env CXJ_SSL_KEYFILE)")
    group.add_argument("--topic-tickets", default=DEFAULT_TOPICS["tickets"], help="ticket topic (default %(default)s)")
    group.add_argument("--topic-chats", default=DEFAULT_TOPICS["chats"], help="chat topic (default %(default)s)")
    group.add_argument("--topic-surveys", default=DEFAULT_TOPICS["surveys"], help="survey topic (default %(default)s)")


def settings_from_args(args: argparse.Namespace) -> KafkaSettings:
    """Secrets come only from the environment so they never appear in `ps` or shell history."""
    return KafkaSettings(
        bootstrap_servers=args.bootstrap_servers,
        security_protocol=args.security_protocol,
        sasl_mechanism=args.sasl_mechanism,
        sasl_plain_username=args.sasl_username,
        sasl_plain_password=os.environ.get("CXJ_SASL_PASSWORD"),
        ssl_cafile=args.ssl_cafile,
        ssl_certfile=args.ssl_certfile,
        ssl_keyfile=args.ssl_keyfile,
        ssl_password=os.environ.get("CXJ_SSL_PASSWORD"),
    )


def topics_from_args(args: argparse.Namespace) -> dict[str, str]:
    """Maps the logical stream (tickets/chats/surveys) to the configured topic name."""
    return {"tickets": args.topic_tickets, "chats": args.topic_chats, "surveys": args.topic_surveys}
