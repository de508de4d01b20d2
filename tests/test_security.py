"""Secrets never reach logs or output; identifiers in SQL are never built from user input."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from pipelines.kafka_config import KafkaSettings

SECRET = "s3cret-Value-42"


def test_describe_hides_passwords():
    settings = KafkaSettings(sasl_plain_username="cxj", sasl_plain_password=SECRET, ssl_password=SECRET)
    assert SECRET not in settings.describe()
    assert SECRET not in repr(settings)
    assert settings.client_kwargs()["sasl_plain_password"] == SECRET  # but it does reach kafka-python


def test_run_never_prints_the_sasl_password(tmp_path, broker):
    env = dict(os.environ, CXJ_SASL_PASSWORD=SECRET, CXJ_SSL_PASSWORD=SECRET)
    for verbose in ([], ["--verbose"]):
        cmd = [sys.executable, "-m", "pipelines.cli", "run", "--once", *verbose, "--db", str(tmp_path / "s.duckdb"),
               "--bootstrap-servers", broker.bootstrap_servers, "--security-protocol", "SASL_PLAINTEXT",
               "--sasl-mechanism", "PLAIN", "--sasl-username", "cxj", "--broker-timeout", "3s"]
        result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
        assert SECRET not in result.stdout + result.stderr
        assert result.returncode != 0  # the local broker does not speak SASL: a clear failure, not a hang


def test_sql_identifiers_come_from_code_not_input():
    """Every f-string SQL in the pipeline interpolates only names defined in code or quoted literals."""
    root = Path(__file__).resolve().parent.parent
    allowed = {"table", "source", "dead_source", "journey_source", "link_source", "touched", "query", "partitioned",
               "columns", "column", "_ts", "_ms_ts", "sql_literal", "int", "partitions", "ident", "view"}
    offenders = []
    for path in (root / "pipelines").glob("store.py"):
        for line_no, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r'f"[^"]*(SELECT|INSERT|DELETE|COPY|FROM)', line):
                names = re.findall(r"\{([a-zA-Z_][a-zA-Z_0-9]*)", line)
                bad = [n for n in names if n not in allowed]
                if bad:
                    offenders.append(f"{path.name}:{line_no}: {bad}")
    assert offenders == []
