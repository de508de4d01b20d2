"""One configuration story, tested through real `cxj` subprocesses: flag > CXJ_* > cxj.toml > default."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import send_events, table

CXJ = [sys.executable, "-m", "pipelines.cli"]


def cxj(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CXJ_")}
    full_env.update(env or {})
    return subprocess.run([*CXJ, *args], capture_output=True, text=True, env=full_env, cwd=cwd, timeout=120)


def shown(result: subprocess.CompletedProcess) -> dict[str, dict]:
    assert result.returncode == 0, result.stderr
    return {row["option"]: row for row in json.loads(result.stdout)["settings"]}


def test_precedence_flag_env_file_default(tmp_path):
    (tmp_path / "cxj.toml").write_text(
        'max_batch_events = 111\npoll_interval = "5s"\nmax_lag = 7\n'
        '[run]\nmax_batch_events = 222\nmetrics_port = 9464\n'
        '[status]\nmax-staleness = "10m"\n')
    rows = shown(cxj("config", "show", "run", "--json", cwd=tmp_path, env={"CXJ_POLL_INTERVAL": "2s"}))
    assert rows["--max-batch-events"]["value"] == 222  # [run] wins over the top level
    assert rows["--max-batch-events"]["source"] == f"file {tmp_path / 'cxj.toml'} [run]"
    assert rows["--metrics-port"]["value"] == 9464
    assert rows["--poll-interval"]["value"] == 2.0 and rows["--poll-interval"]["source"] == "env CXJ_POLL_INTERVAL"
    assert rows["--read-timeout"]["source"] == "default"
    status_rows = shown(cxj("config", "show", "status", "--json", cwd=tmp_path))
    assert status_rows["--max-lag"]["value"] == 7 and status_rows["--max-staleness"]["value"] == 600.0
    # and a real run: the command line beats the environment, which beats the file
    env = {"CXJ_DB": str(tmp_path / "from-env.duckdb"), "CXJ_BOOTSTRAP_SERVERS": "127.0.0.1:1", "CXJ_BROKER_TIMEOUT": "1s"}
    result = cxj("run", "--once", "--log-format", "json", "--db", str(tmp_path / "from-flag.duckdb"), cwd=tmp_path, env=env)
    assert result.returncode == 3, result.stderr  # nothing listens on port 1: the env's broker was used
    assert str(tmp_path / "from-flag.duckdb") in result.stderr and "from-env" not in result.stderr
    assert "gave up after 1s" in result.stderr


def test_every_option_has_an_environment_variable(tmp_path):
    """CXJ_DB used to be ignored; now every option of every command reads CXJ_<OPTION>."""
    from pipelines.cli.main import build_parser
    from pipelines.config.layers import configurable_actions, env_name, long_option

    _, children = build_parser()
    for _command, parser in children.items():
        for action in configurable_actions(parser):
            if action.dest == "config":
                continue
            name = env_name(long_option(action))
            assert name.startswith("CXJ_") and name == "CXJ_" + long_option(action)[2:].replace("-", "_").upper()
    rows = shown(cxj("config", "show", "status", "--json", env={"CXJ_DB": "rel/x.duckdb", "CXJ_JSON": "yes",
                                                                 "CXJ_SECURITY_PROTOCOL": "SSL"}, cwd=tmp_path))
    assert rows["--db"]["value"] == str(tmp_path / "rel" / "x.duckdb") or rows["--db"]["value"] == "rel/x.duckdb"
    assert rows["--db"]["source"] == "env CXJ_DB"
    assert rows["--json"]["value"] is True and rows["--security-protocol"]["value"] == "SSL"


def test_env_and_file_drive_a_real_run(broker, topics, tmp_path):
    send_events(broker, topics, [{"event_id": f"cf{i}", "event_type": "ticket.created", "customer_id": f"c{i}",
                                  "schema_version": 1, "occurred_at": "2026-09-01T00:00:00Z", "ticket_id": f"T{i}",
                                  "channel": "web"} for i in range(7)])
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "pipeline.toml").write_text(
        f'bootstrap_servers = "{broker.bootstrap_servers}"\ntopic_tickets = "{topics["tickets"]}"\n'
        f'topic_chats = "{topics["chats"]}"\ntopic_surveys = "{topics["surveys"]}"\n'
        '[run]\ndb = "data/j.duckdb"\nmax_batch_events = 3\nfollow = true\n')
    # CXJ_CONFIG points at the file; paths in it are relative to the file; --once on the command
    # line overrides the file's follow = true (they are alternatives)
    result = cxj("run", "--once", env={"CXJ_CONFIG": "conf/pipeline.toml"}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    db = tmp_path / "conf" / "data" / "j.duckdb"
    assert table(db, "SELECT count(*) FROM events") == [(7,)]
    assert table(db, "SELECT count(*) FROM pipeline_batches") == [(3,)]  # 3 + 3 + 1
    assert "running once" in result.stderr


@pytest.mark.parametrize("content, message", [
    ("max_batch_evnts = 5\n", "max_batch_evnts is not an option (did you mean max_batch_events or max_batch_bytes?)"),
    ("[runn]\nfollow = true\n", "[runn] is not a cxj command (did you mean run?)"),
    ("[status]\nfollow = true\n", "[status] follow is not an option"),
    ("[run]\nmax_batch_events = \"many\"\n", "--max-batch-events: invalid int value: 'many'"),
    ("security_protocol = \"TLS\"\n", "--security-protocol: invalid choice: 'TLS'"),
    ("[run]\nfollow = \"maybe\"\n", "--follow is a flag; use true or false"),
    ("sasl_password = \"hunter2\"\n", "passwords are read only from the environment"),
    ("this is = not toml\n", "not valid TOML"),
])
def test_config_file_mistakes_are_errors(tmp_path, content, message):
    (tmp_path / "cxj.toml").write_text(content)
    result = cxj("run", "--once", "--db", str(tmp_path / "never.duckdb"), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert f"config file {tmp_path / 'cxj.toml'}" in result.stderr and message in result.stderr, result.stderr
    assert "hunter2" not in result.stderr
    assert not (tmp_path / "never.duckdb").exists()


@pytest.mark.parametrize("env, message", [
    ({"CXJ_MAX_BATCH_EVENTS": "lots"}, "environment CXJ_MAX_BATCH_EVENTS: --max-batch-events: invalid int value: 'lots'"),
    ({"CXJ_SASL_MECHANISM": "None"}, "environment CXJ_SASL_MECHANISM: --sasl-mechanism: invalid choice: 'None'"),
    ({"CXJ_FOLLOW": "perhaps"}, "--follow is a flag"),
    ({"CXJ_CONFIG": "missing.toml"}, "missing.toml: no such file"),
])
def test_environment_mistakes_are_errors(tmp_path, env, message):
    result = cxj("run", "--once", "--db", str(tmp_path / "never.duckdb"), env=env, cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert not (tmp_path / "never.duckdb").exists()


def test_unknown_cxj_variable_is_named(tmp_path):
    result = cxj("config", "show", "run", env={"CXJ_MAX_BATCH_EVENT": "5"}, cwd=tmp_path)
    assert result.returncode == 0
    assert ("environment variable CXJ_MAX_BATCH_EVENT (did you mean CXJ_MAX_BATCH_EVENTS or CXJ_MAX_BATCH_BYTES?) "
            "is not a cxj setting") in result.stderr


def test_config_show_masks_secrets(tmp_path):
    env = {"CXJ_SASL_PASSWORD": "s3cr3t-value", "CXJ_SASL_USERNAME": "cxj"}
    text = cxj("config", "show", "run", env=env, cwd=tmp_path)
    as_json = cxj("config", "show", "run", "--json", env=env, cwd=tmp_path)
    for result in (text, as_json):
        assert result.returncode == 0 and "s3cr3t-value" not in result.stdout + result.stderr
    rows = shown(as_json)
    assert rows["(SASL password)"]["value"] == "*** (set)" and rows["(password of the client key)"]["value"] == "(not set)"
    assert "--sasl-username" in text.stdout and "env CXJ_SASL_USERNAME" in text.stdout


def test_relative_paths_are_shown_absolute(tmp_path):
    status = cxj("status", "--db", "rel/x.duckdb", cwd=tmp_path)
    assert status.returncode == 2 and f"CRIT  {tmp_path / 'rel' / 'x.duckdb'} does not exist yet" in status.stdout
    from_env = cxj("sql", "SELECT 1", env={"CXJ_DB": "other/y.duckdb"}, cwd=tmp_path)
    assert from_env.returncode == 2 and str(tmp_path / "other" / "y.duckdb") in from_env.stderr
