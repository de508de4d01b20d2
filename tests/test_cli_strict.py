"""The command line is strict: real `cxj` subprocesses, typos and misplaced options are errors
with a hint, before anything is created; Beam options pass only when Beam knows them."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import free_port, send_events

CXJ = [sys.executable, "-m", "pipelines.cli"]


def cxj(*args: str, env: dict | None = None, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CXJ_")}
    full_env.update(env or {})
    return subprocess.run([*CXJ, *args], capture_output=True, text=True, env=full_env, cwd=cwd, timeout=timeout)


@pytest.mark.parametrize("argv, hint", [
    (["run", "--folow"], "unknown option --folow (did you mean --follow?)"),
    (["run", "--max_batch_events=500"], "unknown option --max_batch_events (did you mean --max-batch-events?)"),
    (["run", "--bootstrap_servers", "x:1"], "unknown option --bootstrap_servers (did you mean --bootstrap-servers?)"),
    (["run", "--fol"], "unknown option --fol"),  # no abbreviations: --fol is not --follow
    (["run", "--max-batch-event", "5"], "did you mean --max-batch-events or --max-batch-bytes?"),
    (["run", "--job_endpont=localhost:8099"], "did you mean --job_endpoint"),
    (["status", "--max-lagg", "5"], "unknown option --max-lagg (did you mean --max-lag?)"),
    (["status", "--runner=DirectRunner"], "unknown option --runner"),  # Beam options belong to `run` only
    (["simulate", "--customer", "5"], "did you mean --customers?"),
    (["broker", "stat"], "invalid choice: 'stat'"),
    (["run", "once"], "unexpected argument 'once'"),
    (["stauts"], "unknown command stauts (did you mean status?)"),
    (["run", "--sasl-mechanism", "None"], "invalid choice: 'None'"),
])
def test_typos_are_errors_with_a_hint(tmp_path, argv, hint):
    result = cxj(*argv, "--db", str(tmp_path / "never.duckdb"), cwd=tmp_path) if argv[0] in ("run", "status") \
        else cxj(*argv, cwd=tmp_path)
    assert result.returncode == 2, (argv, result.returncode, result.stderr)
    assert hint in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr  # one line
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "never.duckdb").exists()


def test_wrong_runner_fails_before_the_database_exists(tmp_path):
    db = tmp_path / "sub" / "j.duckdb"
    result = cxj("run", "--once", "--db", str(db), "--runner=DirectRuner", cwd=tmp_path)
    assert result.returncode == 2
    assert "unknown Beam runner 'DirectRuner' (did you mean DirectRunner" in result.stderr
    assert "known runners:" in result.stderr
    assert not db.exists() and not db.parent.exists()  # neither the database nor its replica was created
    missing = cxj("run", "--once", "--db", str(db), "--runner=no.such.module.Runner", cwd=tmp_path)
    assert missing.returncode == 2 and "cannot be loaded" in missing.stderr and not db.exists()


def test_known_beam_options_pass_and_the_runner_is_logged(broker, topics, tmp_path):
    send_events(broker, topics, [{"event_id": "b1", "event_type": "ticket.created", "customer_id": "c1", "schema_version": 1,
                                  "occurred_at": "2026-09-01T00:00:00Z", "ticket_id": "T1", "channel": "web"}])
    db = tmp_path / "j.duckdb"
    result = cxj("run", "--once", "--db", str(db), "--log-format", "json", "--direct_num_workers=2",
                 "--bootstrap-servers", broker.bootstrap_servers, "--topic-tickets", topics["tickets"],
                 "--topic-chats", topics["chats"], "--topic-surveys", topics["surveys"])
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    start = next(line for line in lines if "runner" in line)
    assert start["runner"] == "FnApiRunner (in-process; 2 workers, mode in_memory)"
    assert start["beam_args"] == ["--direct_num_workers=2"] and start["mode"] == "once"
    assert start["max_batch_events"] == 50_000


def test_version_and_help():
    result = cxj("--version")
    assert result.returncode == 0 and result.stdout.startswith("cxj 0.1.0 (Apache Beam 2.77.0")
    helped = cxj("run", "--help")
    assert helped.returncode == 0 and "--metrics-host" in helped.stdout
    simulate_help = cxj("simulate", "--help").stdout
    assert "None" not in simulate_help.split("--sasl-mechanism", 1)[1].split("\n  --", 1)[0]


def test_clean_pipe(tmp_path):
    """`cxj ... | head -1`: no BrokenPipeError traceback when the reader goes away."""
    proc = subprocess.Popen(f"{sys.executable} -m pipelines.cli run --help | head -1", shell=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=60)
    assert out.startswith("usage: cxj run") and err == ""
    big = subprocess.run(f"{sys.executable} -m pipelines.cli config show run --json | head -c 10", shell=True,
                         capture_output=True, text=True, timeout=60)
    assert big.stdout == '{\n  "comma' and big.stderr == ""


@pytest.mark.parametrize("env, args, message", [
    ({"CXJ_SECURITY_PROTOCOL": "SASL_SSL", "CXJ_SASL_MECHANISM": "SCRAM-SHA-512", "CXJ_SASL_USERNAME": "cxj"}, [],
     "SASL mechanism SCRAM-SHA-512 needs a password: set CXJ_SASL_PASSWORD"),
    ({}, ["--security-protocol", "SASL_SSL"], "--security-protocol SASL_SSL needs --sasl-mechanism"),
    ({"CXJ_SASL_PASSWORD": "pw"}, ["--security-protocol", "SASL_PLAINTEXT", "--sasl-mechanism", "PLAIN"],
     "SASL mechanism PLAIN needs a user name"),
    ({}, ["--sasl-mechanism", "PLAIN"], "--sasl-mechanism PLAIN is used only with --security-protocol SASL_PLAINTEXT or SASL_SSL"),
    ({}, ["--security-protocol", "SSL", "--ssl-cafile", "certs/ca.pem"], "/certs/ca.pem: no such file"),
    ({}, ["--ssl-cafile", "/etc/hostname"], "--ssl-cafile is used only with --security-protocol SSL or SASL_SSL"),
])
def test_secure_connection_problems_name_their_cause(tmp_path, env, args, message):
    for command in ("run", "status", "simulate") if "CXJ_SASL_USERNAME" in env else ("status",):
        result = cxj(command, "--bootstrap-servers", f"127.0.0.1:{free_port()}", *args, env=env, cwd=tmp_path)
        assert result.returncode == 2, (command, result.stderr)
        assert message in result.stderr, result.stderr
        assert "cannot reach Kafka" not in result.stderr
    if "certs/ca.pem" in args:  # the message shows the absolute path
        assert str(tmp_path / "certs" / "ca.pem") in result.stderr


def test_a_ca_file_that_is_not_a_certificate(tmp_path):
    bogus = tmp_path / "ca.pem"
    bogus.write_text("this is not a certificate\n")
    result = cxj("status", "--security-protocol", "SSL", "--ssl-cafile", str(bogus), cwd=tmp_path)
    assert result.returncode == 2 and f"--ssl-cafile {bogus}: not a PEM CA bundle" in result.stderr


def test_broker_refusing_the_sasl_mechanism_is_named(broker, topics, tmp_path):
    """The local broker has no SASL: the error names the refused mechanism, not just 'cannot reach'."""
    db = tmp_path / "j.duckdb"
    result = cxj("run", "--once", "--db", str(db), "--broker-timeout", "3s", "--bootstrap-servers", broker.bootstrap_servers,
                 "--security-protocol", "SASL_PLAINTEXT", "--sasl-mechanism", "PLAIN", "--sasl-username", "u",
                 "--topic-tickets", topics["tickets"], env={"CXJ_SASL_PASSWORD": "secret-pw"}, cwd=tmp_path)
    assert result.returncode == 3, result.stderr
    assert "cause: the broker does not accept SASL mechanism PLAIN" in result.stderr, result.stderr
    assert "secret-pw" not in result.stderr + result.stdout
    status = cxj("status", "--db", str(db), "--bootstrap-servers", broker.bootstrap_servers,
                 "--security-protocol", "SASL_PLAINTEXT", "--sasl-mechanism", "SCRAM-SHA-256", "--sasl-username", "u",
                 env={"CXJ_SASL_PASSWORD": "secret-pw"}, cwd=tmp_path)
    assert status.returncode == 2 and "does not accept SASL mechanism SCRAM-SHA-256" in status.stdout, status.stdout


def test_tls_against_a_plaintext_listener_names_the_cause(broker, topics, tmp_path):
    """kafka-python would hang for ever on a TLS handshake with a plaintext listener."""
    started = time.monotonic()
    run = cxj("run", "--once", "--db", str(tmp_path / "j.duckdb"), "--broker-timeout", "2s", "--security-protocol", "SSL",
              "--bootstrap-servers", broker.bootstrap_servers, "--topic-tickets", topics["tickets"], cwd=tmp_path)
    assert run.returncode == 3, run.stderr
    assert "the listener does not seem to speak TLS (check --security-protocol)" in run.stderr
    status = cxj("status", "--db", str(tmp_path / "j.duckdb"), "--security-protocol", "SSL",
                 "--bootstrap-servers", broker.bootstrap_servers, cwd=tmp_path)
    assert status.returncode == 2 and "does not seem to speak TLS" in status.stdout
    simulate = cxj("simulate", "--customers", "1", "--security-protocol", "SSL", "--bootstrap-servers",
                   broker.bootstrap_servers, cwd=tmp_path)
    assert simulate.returncode == 3 and "does not seem to speak TLS" in simulate.stderr
    assert time.monotonic() - started < 90
