"""Secrets never reach logs or output; SQL text is never built from unchecked input."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from pipelines.kafka_config import KafkaSettings
from tests.support import send_events

SECRET = "s3cret-Value-42"
ROOT = Path(__file__).resolve().parent.parent


def test_describe_hides_passwords():
    settings = KafkaSettings(sasl_plain_username="cxj", sasl_plain_password=SECRET, ssl_password=SECRET)
    assert SECRET not in settings.describe()
    assert SECRET not in repr(settings)
    assert settings.client_kwargs()["sasl_plain_password"] == SECRET  # but it does reach kafka-python


def test_commands_never_print_the_sasl_password(tmp_path, broker):
    env = dict(os.environ, CXJ_SASL_PASSWORD=SECRET, CXJ_SSL_PASSWORD=SECRET, CXJ_REPLICA="off")
    sasl = ["--bootstrap-servers", broker.bootstrap_servers, "--security-protocol", "SASL_PLAINTEXT",
            "--sasl-mechanism", "PLAIN", "--sasl-username", "cxj"]
    db = str(tmp_path / "s.duckdb")
    for command in (["run", "--once", "--broker-timeout", "1s"], ["run", "--once", "--verbose", "--broker-timeout", "1s"],
                    ["run", "--once", "--log-format", "json", "--broker-timeout", "1s"], ["status"]):
        result = subprocess.run([sys.executable, "-m", "pipelines.cli", *command, "--db", db, *sasl],
                                capture_output=True, text=True, env=env, timeout=120)
        assert SECRET not in result.stdout + result.stderr, command
        assert result.returncode != 0, command  # the local broker does not speak SASL: a clear failure, not a hang
        assert "Traceback" not in result.stderr, command


# Names that may appear inside {...} of an f-string holding SQL in pipelines/: constants, values the
# code computed (ints, names from fixed tuples, SQL fragments built the same way) and the quoting
# helpers. A new name here needs a reason. Identifiers from users (the --db file name becomes the
# database name) go through ident(); paths and other text through sql_literal().
REVIEWED = {
    "LAKE_ALIAS", "META_TABLE", "STATE_TABLE", "MERGE_LARGE",  # module constants
    "_ts", "_ms_ts", "sql_literal", "ident", "int",  # quoting and casting helpers
    "columns", "source", "dead_source", "journey_source", "link_source", "partitioned", "query", "touched",
    "window", "lake", "self.source",  # fragments built from the above (source: read_parquet([sql_literal...]))
    "table", "t", "name", "column", "cap", "ids",  # from fixed tuples / code call sites / ints read back
    # analyst tools: model SQL comes from the repository's sql/models files; names and text are quoted
    "_ident", "_literal", "m.select", "kind", "self._relations", "self._like",
    # report.py: WHERE clauses of `?` placeholders (values are bound parameters) and bucket CASEs from constants
    "journeys", "where", "landed_where", "landed_where.replace", "label", "order",
}
# Reported: CXJ_REPLICA_RETENTION (environment) is pasted into INTERVAL '...' unquoted.
KNOWN_UNQUOTED = {"replica.py: RETENTION"}
SQL = re.compile(r"\b(SELECT|INSERT|DELETE|COPY|FROM|ATTACH|CREATE|DROP|UPDATE|USE|LOAD|CALL|DESCRIBE|INTERVAL|WHERE)\b")


def test_sql_text_is_built_only_from_reviewed_names():
    """Every f-string with SQL in the pipeline interpolates only reviewed names."""
    found = set()
    for path in sorted((ROOT / "pipelines").glob("*.py")):
        for match in re.finditer(r'''\bf("""[\s\S]*?"""|"[^"\n]*"|'[^'\n]*')''', path.read_text()):
            if SQL.search(match.group(1)):
                found |= {f"{path.name}: {n}" for n in re.findall(r"\{([A-Za-z_][A-Za-z_0-9.]*)", match.group(1))}
    unreviewed = {f for f in found if f.split(": ")[1] not in REVIEWED} - KNOWN_UNQUOTED
    assert unreviewed == set()


def test_a_hostile_database_path_is_quoted_everywhere(broker, topics, tmp_path):
    """The --db path ends up in SQL as a database name, a file path and the replica's paths."""
    folder = tmp_path / "it's \"odd\"; DROP TABLE events; --"
    folder.mkdir()
    db = folder / "j'o\"u.duckdb"
    send_events(broker, topics, [{"event_id": f"q{i}", "event_type": "ticket.created", "customer_id": "c", "schema_version": 1,
                                  "occurred_at": "2026-10-01T10:00:00+02:00", "ticket_id": f"T{i}", "channel": "web"}
                                 for i in range(5)])
    run = [sys.executable, "-m", "pipelines.cli", "run", "--once", "--db", str(db), "--bootstrap-servers", broker.bootstrap_servers,
           "--topic-tickets", topics["tickets"], "--topic-chats", topics["chats"], "--topic-surveys", topics["surveys"]]
    result = subprocess.run(run, capture_output=True, text=True, timeout=120)  # with the DuckLake read replica
    assert result.returncode == 0, result.stderr[-2000:]
    assert "replica disabled" not in result.stderr
    query = subprocess.run([sys.executable, "-m", "pipelines.cli", "sql", "SELECT count(*) AS n FROM events", "--db", str(db),
                            "--format", "csv"], capture_output=True, text=True, timeout=120)
    assert query.returncode == 0 and query.stdout.split() == ["n", "5"], query.stdout + query.stderr
