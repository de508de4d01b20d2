"""Kafka connection settings shared by every component that talks to the broker.

One place builds kafka-python keyword arguments so that SASL/SSL settings given on the
command line reach producers, consumers and admin clients alike, and so that secrets are
never echoed: ``describe()`` is what logs may print.
"""
from __future__ import annotations

import argparse
import logging
import os
import ssl
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
DEFAULT_TOPICS: dict[str, str] = {
    "tickets": "cx.tickets",
    "chats": "cx.chats",
    "surveys": "cx.surveys",
}

# Consumer tuning measured on this class of machine (docs/architecture.md, D6): defaults give ~3.7k msg/s,
# these give ~33k msg/s.
FAST_CONSUMER_SETTINGS: dict[str, Any] = {
    "max_poll_records": 10_000,
    "fetch_max_bytes": 64 * 1024 * 1024,
    "max_partition_fetch_bytes": 16 * 1024 * 1024,
    "fetch_max_wait_ms": 100,
}

# KafkaSettings field -> librdkafka's name for it
_LIBRDKAFKA_NAMES = {
    "sasl_mechanism": "sasl.mechanisms",
    "sasl_plain_username": "sasl.username",
    "sasl_plain_password": "sasl.password",
    "ssl_cafile": "ssl.ca.location",
    "ssl_certfile": "ssl.certificate.location",
    "ssl_keyfile": "ssl.key.location",
    "ssl_password": "ssl.key.password",
}

_SECRET_KEYS = {"sasl_plain_password", "ssl_password"}


class SettingsProblem(ValueError):
    """A connection setting that cannot work (missing password or file, mismatched options)."""


class ClientErrorRecorder(logging.Handler):
    """Keeps kafka-python's last connection errors, which name the real cause of a failure
    (UnsupportedSaslMechanismError, certificate verify failed, ...) that its exceptions only
    summarise as "Unable to bootstrap"; `failure_cause()` turns them into one readable clause."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.recent: deque[str] = deque(maxlen=20)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.recent.append(record.getMessage())
        except Exception:  # a broken log record must not break the client
            pass


_recorder = ClientErrorRecorder()

# kafka-python message fragment -> what it means for the user
_CAUSES = (
    ("UnsupportedSaslMechanism", "the broker does not accept SASL mechanism {mechanism} on this listener "
                                 "(check --sasl-mechanism and --security-protocol)"),
    ("SaslAuthenticationFailed", "SASL authentication failed: check --sasl-username and CXJ_SASL_PASSWORD"),
    ("IllegalSaslState", "the broker refused the SASL handshake: check --security-protocol and --sasl-mechanism"),
    ("CERTIFICATE_VERIFY_FAILED", "the broker's TLS certificate is not trusted: check --ssl-cafile"),
    ("WRONG_VERSION_NUMBER", "TLS handshake failed: the listener does not speak TLS (check --security-protocol)"),
    ("No such file or directory", "a TLS file does not exist: check --ssl-cafile/--ssl-certfile/--ssl-keyfile"),
    ("TopicAuthorizationFailed", "not authorised to read the topics: the principal needs Describe and Read ACLs"),
)


def probe_tls(settings: "KafkaSettings", timeout_s: float = 5.0) -> str | None:
    """One TLS handshake with the first bootstrap server, bounded by ``timeout_s``.

    Why: kafka-python does not time out a TLS handshake against a listener that answers in plain
    text (the listener waits for a Kafka frame, the client for a ServerHello), so without this
    `--security-protocol SSL` on a plaintext port hangs for ever. Returns the cause, or None
    when the handshake works or the server is unreachable (the client reports that itself).
    """
    import socket

    if not settings.security_protocol.endswith("SSL"):
        return None
    first = next(iter(settings.servers), "")
    host, _, port_text = first.rpartition(":")
    try:
        port = int(port_text)
        context = ssl.create_default_context(cafile=settings.ssl_cafile)
        if settings.ssl_certfile:
            context.load_cert_chain(settings.ssl_certfile, settings.ssl_keyfile, password=settings.ssl_password)
        with socket.create_connection((host.strip("[]"), port), timeout=timeout_s) as raw:
            with context.wrap_socket(raw, server_hostname=host.strip("[]")):
                return None
    except ssl.SSLCertVerificationError as exc:
        return f"the broker's TLS certificate is not trusted ({exc.verify_message}): check --ssl-cafile"
    except ssl.SSLError as exc:
        return f"TLS handshake with {first} failed ({exc.reason or exc}): check --security-protocol and the TLS files"
    except (socket.timeout, TimeoutError):
        return (f"TLS handshake with {first} got no answer within {timeout_s:g}s: the listener does not seem to "
                "speak TLS (check --security-protocol)")
    except (OSError, ValueError):
        return None


def install_cause_recorder() -> None:
    """Listens to kafka-python's warnings whatever the console shows (see pipelines/ops/logs.py)."""
    logger = logging.getLogger("kafka")
    if _recorder not in logger.handlers:
        logger.addHandler(_recorder)
    if logger.level == logging.NOTSET or logger.level > logging.WARNING:
        logger.setLevel(logging.WARNING)


def failure_cause(settings: "KafkaSettings") -> str:
    """'; cause: ...' from the client's recent errors, or '' when they say nothing specific."""
    recent = list(_recorder.recent)
    for fragment, meaning in _CAUSES:
        if any(fragment in message for message in recent):
            return "; cause: " + meaning.format(mechanism=settings.sasl_mechanism or "(none)")
    return ""


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

    @property
    def servers(self) -> list[str]:
        """The bootstrap servers as a list: the comma-separated option, blanks dropped."""
        return [s.strip() for s in self.bootstrap_servers.split(",") if s.strip()]

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments accepted by KafkaProducer, KafkaConsumer and KafkaAdminClient."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self.servers,
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

    def librdkafka_config(self) -> dict[str, Any]:
        """The same connection in librdkafka's (confluent-kafka's) names, for the range reader."""
        config: dict[str, Any] = {
            "bootstrap.servers": ",".join(self.servers),
            "security.protocol": self.security_protocol.lower(),
            "socket.timeout.ms": self.request_timeout_ms,
        }
        for key, name in _LIBRDKAFKA_NAMES.items():
            value = getattr(self, key)
            if value is not None:
                config[name] = value
        return config

    def check(self) -> None:
        """Raises SettingsProblem naming the first setting that cannot work, before any connection.

        Without this a missing password or CA file surfaced as "cannot reach Kafka" after the
        connection timeout, with the cause only in the client's debug logs.
        """
        for problem in self.problems():
            raise SettingsProblem(problem)

    def problems(self) -> list[str]:
        found: list[str] = []
        sasl = self.security_protocol.startswith("SASL_")
        tls = self.security_protocol.endswith("SSL")
        if sasl and not self.sasl_mechanism:
            found.append(f"--security-protocol {self.security_protocol} needs --sasl-mechanism ({', '.join(SASL_MECHANISMS)})")
        if self.sasl_mechanism and not sasl:
            found.append(f"--sasl-mechanism {self.sasl_mechanism} is used only with --security-protocol SASL_PLAINTEXT "
                         f"or SASL_SSL, not {self.security_protocol}")
        if sasl and self.sasl_mechanism:
            if self.sasl_mechanism not in SASL_MECHANISMS:
                found.append(f"SASL mechanism {self.sasl_mechanism} is not supported (supported: {', '.join(SASL_MECHANISMS)})")
            if not self.sasl_plain_username:
                found.append(f"SASL mechanism {self.sasl_mechanism} needs a user name: --sasl-username or CXJ_SASL_USERNAME")
            if not self.sasl_plain_password:
                found.append(f"SASL mechanism {self.sasl_mechanism} needs a password: set CXJ_SASL_PASSWORD "
                             "(passwords are read only from the environment)")
        files = {"--ssl-cafile": self.ssl_cafile, "--ssl-certfile": self.ssl_certfile, "--ssl-keyfile": self.ssl_keyfile}
        for option, value in files.items():
            if value is None:
                continue
            if not tls:
                found.append(f"{option} is used only with --security-protocol SSL or SASL_SSL, not {self.security_protocol}")
                continue
            file = Path(value)
            if not file.exists():
                found.append(f"{option} {file}: no such file")
            elif not file.is_file():
                found.append(f"{option} {file}: not a file")
            elif not os.access(file, os.R_OK):
                found.append(f"{option} {file}: not readable by this user")
        if found or not tls:
            return found
        try:
            context = ssl.create_default_context(cafile=self.ssl_cafile)
        except ssl.SSLError as exc:
            return [f"--ssl-cafile {self.ssl_cafile}: not a PEM CA bundle ({exc.reason or exc})"]
        if self.ssl_certfile:
            try:
                context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile, password=self.ssl_password)
            except ssl.SSLError as exc:
                return [f"--ssl-certfile {self.ssl_certfile}: the certificate and key do not load ({exc.reason or exc}; "
                        "a key protected by a password reads it from CXJ_SSL_PASSWORD)"]
        return found

    def describe(self) -> str:
        """A loggable description: never contains a password."""
        shown = {k: v for k, v in self.client_kwargs().items() if k not in _SECRET_KEYS}
        if any(k in self.client_kwargs() for k in _SECRET_KEYS):
            shown["credentials"] = "***"
        return ", ".join(f"{k}={v}" for k, v in shown.items())


SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")  # what a password from the environment can serve
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")


def add_kafka_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the connection options every broker-facing command takes (each also reads CXJ_<OPTION>)."""
    group = parser.add_argument_group("Kafka connection")
    group.add_argument("--bootstrap-servers", default=DEFAULT_BOOTSTRAP,
                       help="comma-separated host:port list (env CXJ_BOOTSTRAP_SERVERS; default %(default)s)")
    group.add_argument("--security-protocol", default="PLAINTEXT", choices=SECURITY_PROTOCOLS,
                       help="Kafka security protocol (env CXJ_SECURITY_PROTOCOL; default %(default)s)")
    group.add_argument("--sasl-mechanism", default=None, choices=SASL_MECHANISMS,
                       help="SASL mechanism, with --security-protocol SASL_PLAINTEXT or SASL_SSL; the password is "
                            "read from CXJ_SASL_PASSWORD (env CXJ_SASL_MECHANISM)")
    group.add_argument("--sasl-username", default=None, help="SASL user name (env CXJ_SASL_USERNAME)")
    group.add_argument("--ssl-cafile", default=None, help="CA bundle to verify the brokers (env CXJ_SSL_CAFILE)")
    group.add_argument("--ssl-certfile", default=None, help="client certificate (env CXJ_SSL_CERTFILE)")
    group.add_argument("--ssl-keyfile", default=None,
                       help="client key (env CXJ_SSL_KEYFILE; its password from CXJ_SSL_PASSWORD)")
    group.add_argument("--topic-tickets", default=DEFAULT_TOPICS["tickets"], help="ticket topic (default %(default)s)")
    group.add_argument("--topic-chats", default=DEFAULT_TOPICS["chats"], help="chat topic (default %(default)s)")
    group.add_argument("--topic-surveys", default=DEFAULT_TOPICS["surveys"], help="survey topic (default %(default)s)")


def settings_from_args(args: argparse.Namespace) -> KafkaSettings:
    """Secrets come only from the environment so they never appear in `ps` or shell history."""
    def path(value: Any) -> str | None:
        return str(Path(value).expanduser().absolute()) if value else None

    return KafkaSettings(
        bootstrap_servers=args.bootstrap_servers,
        security_protocol=args.security_protocol,
        sasl_mechanism=args.sasl_mechanism,
        sasl_plain_username=args.sasl_username,
        sasl_plain_password=os.environ.get("CXJ_SASL_PASSWORD") or None,
        ssl_cafile=path(args.ssl_cafile),
        ssl_certfile=path(args.ssl_certfile),
        ssl_keyfile=path(args.ssl_keyfile),
        ssl_password=os.environ.get("CXJ_SSL_PASSWORD") or None,
    )


def topics_from_args(args: argparse.Namespace) -> dict[str, str]:
    """Maps the logical stream (tickets/chats/surveys) to the configured topic name."""
    return {"tickets": args.topic_tickets, "chats": args.topic_chats, "surveys": args.topic_surveys}
