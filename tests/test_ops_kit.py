"""The ops kit against real parts: status verdicts on dead letters, the rules file, the dashboard,
the health endpoint, and every metric the docs promise scraped from a live run."""
from __future__ import annotations

import configparser
import json
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support import free_port, run_once, send, send_events


def good_events(prefix: str, n: int) -> list[dict]:
    start = datetime(2026, 9, 1, tzinfo=timezone.utc)
    return [{"event_id": f"{prefix}-{i}", "event_type": "ticket.created", "customer_id": f"{prefix}c{i}",
             "schema_version": 1, "occurred_at": (start + timedelta(minutes=i)).isoformat(),
             "ticket_id": f"{prefix}T{i}", "channel": "web"} for i in range(n)]


def status(db, broker, topics, *extra) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pipelines.cli", "status", "--db", str(db), "--bootstrap-servers",
           broker.bootstrap_servers, "--topic-tickets", topics["tickets"], "--topic-chats", topics["chats"],
           "--topic-surveys", topics["surveys"], *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_status_flags_a_dead_letter_rate(broker, topics, db):
    """96 % dead letters used to read OK; now the default threshold (10 %) says CRIT, with the figures."""
    send_events(broker, topics, good_events("ok", 4))
    send(broker, topics, [("tickets", b"k", b"not json %d" % i) for i in range(96)])
    run_once(db, broker, topics)
    result = status(db, broker, topics, "--json")
    report = json.loads(result.stdout)
    assert result.returncode == 2, result.stdout
    assert report["recent_consumed"] == 100 and report["recent_dead_letters"] == 96
    assert report["dead_letter_rate"] == 0.96
    assert any("dead-letter rate 96.0% (96 of 100 records" in r for r in report["reasons"])
    text = status(db, broker, topics)
    assert text.returncode == 2 and text.stdout.startswith("CRIT") and "dead-letter rate: 96.0% of 100 records" in text.stdout
    # thresholds: WARN past half, OK below half, off at 1
    assert status(db, broker, topics, "--max-dead-letter-rate", "1").returncode == 0
    assert status(db, broker, topics, "--max-dead-letter-rate", "100%").returncode == 0
    assert status(db, broker, topics, "--max-dead-letter-rate", "0.97").returncode == 1
    bad = status(db, broker, topics, "--max-dead-letter-rate", "1.5")
    assert bad.returncode == 2 and "not between 0 and 1" in bad.stderr


def test_status_dead_letter_rate_counts_recent_batches_only(broker, topics, db):
    """A clean batch after a bad one: the rate is over all batches of the last hour, exactly."""
    send(broker, topics, [("chats", b"k", b"[1]") for _ in range(5)])
    run_once(db, broker, topics)
    send_events(broker, topics, good_events("later", 95))
    run_once(db, broker, topics)
    report = json.loads(status(db, broker, topics, "--json").stdout)
    assert (report["recent_consumed"], report["recent_dead_letters"]) == (100, 5)
    assert report["level_name"] == "OK"  # 5 % is exactly half of the default 10 %: not past it
    assert json.loads(status(db, broker, topics, "--json", "--max-dead-letter-rate", "0.09").stdout)["level_name"] == "WARN"


# ---------------------------------------------------------------- the kit against a live run


ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def served(port: int) -> dict[str, list[tuple[dict, float]]]:
    _, text = http_get(f"http://127.0.0.1:{port}/metrics")
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append((dict(s.labels), s.value))
    return samples


def documented_metrics() -> list[str]:
    text = (ROOT / "docs" / "ops.md").read_text()
    section = text.split("## Prometheus metrics and health", 1)[1].split("\n## ", 1)[0]
    names = []
    for line in section.splitlines():
        if line.startswith("| `"):
            names += re.findall(r"`([a-z_]+)`", line.split("|")[1])
    return names


def metric_names_in(expr: str) -> set[str]:
    return {n for n in re.findall(r"\b((?:cxj|process)_[a-z0-9_]+|up)\b", expr)}


@pytest.fixture(scope="module")
def live_run(tmp_path_factory, request):
    """One `run --follow --check --commit-group` with real traffic; yields what the tests look at."""
    broker = request.getfixturevalue("broker")
    from tests.support import new_topics

    topics = new_topics(broker)
    tmp = tmp_path_factory.mktemp("kit")
    port = free_port()
    group = f"cxj-kit-{port}"
    events = good_events("kit", 30)
    send_events(broker, topics, events + events[:3])  # 3 duplicates
    send(broker, topics, [("chats", b"k", b"not json"), ("tickets", b"k", b'{"schema_version": 1}')])
    cmd = [sys.executable, "-m", "pipelines.cli", "run", "--follow", "--check", "--db", str(tmp / "kit.duckdb"),
           "--metrics-port", str(port), "--poll-interval", "0.2s", "--stall-after", "1s", "--commit-group", group,
           "--bootstrap-servers", broker.bootstrap_servers, "--topic-tickets", topics["tickets"],
           "--topic-chats", topics["chats"], "--topic-surveys", topics["surveys"]]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    health_seen: list[tuple[int, dict]] = []
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            try:
                code, body = http_get(f"http://127.0.0.1:{port}/healthz")
                health_seen.append((code, json.loads(body)))
                samples = served(port)
            except OSError:
                samples = {}
            runs = sum(v for _, v in samples.get("cxj_quality_check_runs_total", []))
            if runs >= 1 and samples.get("cxj_lag_messages", [({}, 1)])[0][1] == 0 and health_seen[-1][0] == 200:
                break
            assert time.monotonic() < deadline, "the live run never landed and checked a batch"
            time.sleep(0.1)
        yield {"port": port, "samples": samples, "health": health_seen, "group": group, "broker": broker, "topics": topics}
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]


def test_every_documented_metric_is_served(live_run):
    samples = live_run["samples"]
    documented = documented_metrics()
    assert len(documented) >= 24, documented
    for name in documented:
        candidates = [name, f"{name}_count"]  # a histogram is documented by its base name
        values = [v for c in candidates for _, v in samples.get(c, [])]
        assert values, f"{name} is documented in docs/ops.md but not served"
        assert all(v == v for v in values), f"{name} has no real value (NaN)"
    assert samples["cxj_records_consumed_total"][0][1] == 35
    assert samples["cxj_duplicates_total"][0][1] == 3
    assert sum(v for _, v in samples["cxj_dead_letters_total"]) == 2
    assert samples["cxj_quality_checks_failed"][0][1] == 0
    assert samples["cxj_broker_up"][0][1] == 1
    assert dict((labels["result"], v) for labels, v in samples["cxj_quality_check_runs_total"]).get("pass", 0) >= 1
    build = samples["cxj_build_info"][0][0]
    assert build["version"] == "0.1.0" and build["beam"] == "2.77.0"
    assert abs(samples["cxj_last_batch_timestamp_seconds"][0][1] - time.time()) < 600

    # /healthz: 503 while a batch (and its quality run) held the loop past --stall-after 1s, 200 when idle
    codes = [(code, body["status"]) for code, body in live_run["health"]]
    assert (503, "stalled") in codes and codes[-1] == (200, "ok"), codes
    last = live_run["health"][-1][1]
    assert last["broker_up"] is True and last["lag_messages"] == 0 and last["last_batch_at"]
    assert http_get(f"http://127.0.0.1:{live_run['port']}/nope")[0] == 404

    # the landed offsets are in the consumer group too, for kafka-consumer-groups / Burrow
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(**live_run["broker"].client_kwargs())
    try:
        group = admin.list_group_offsets(live_run["group"])[live_run["group"]]
    finally:
        admin.close()
    committed = {(tp.topic, tp.partition): meta.offset for tp, meta in group.items() if meta.offset}
    landed = {(labels["topic"], int(labels["partition"])): v for labels, v in samples["cxj_landed_offset"] if v}
    assert committed == landed and sum(landed.values()) == 35


def test_rules_and_dashboard_reference_only_served_metrics(live_run):
    served_names = set(live_run["samples"]) | {"up"}
    rules = yaml.safe_load((INFRA / "prometheus" / "cxj-rules.yml").read_text())
    alerts = [r for g in rules["groups"] for r in g["rules"]]
    assert {"CxjPipelineDown", "CxjLagGrowing", "CxjStalled", "CxjDeadLetterRate", "CxjQualityCheckFailed",
            "CxjBrokerUnreachable"} <= {a["alert"] for a in alerts}
    for alert in alerts:
        assert alert["labels"]["severity"] in ("warning", "critical")
        assert alert["annotations"]["summary"] and alert["annotations"]["description"]
        assert metric_names_in(alert["expr"]) <= served_names, (alert["alert"], metric_names_in(alert["expr"]) - served_names)
    assert any("for" in a for a in alerts)

    dashboard = json.loads((INFRA / "grafana" / "dashboards" / "cxj-pipeline.json").read_text())
    titles = " | ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("lag", "freshness", "throughput", "dead letters", "batch latency", "quality"):
        assert topic in titles, topic
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert exprs and all(metric_names_in(e) for e in exprs)
    for expr in exprs:
        assert metric_names_in(expr) <= served_names, (expr, metric_names_in(expr) - served_names)

    promtool = shutil.which("promtool")
    if promtool:  # Debian's prometheus package; .ci/run installs it where apt works
        for args in (["check", "rules", "cxj-rules.yml"], ["check", "config", "prometheus.yml"],
                     ["test", "rules", "cxj-rules.test.yml"]):
            result = subprocess.run([promtool, *args], cwd=INFRA / "prometheus", capture_output=True, text=True, timeout=60)
            assert result.returncode == 0, (args, result.stdout, result.stderr)


def test_compose_and_systemd_unit_are_well_formed(tmp_path):
    compose = yaml.safe_load((INFRA / "docker-compose.ops.yml").read_text())
    services = compose["services"]
    assert {"kafka", "pipeline", "simulator", "prometheus", "grafana"} <= set(services)
    assert "--metrics-host 0.0.0.0 --metrics-port 9464" in services["pipeline"]["command"]
    assert "cxj simulate --live" in services["simulator"]["command"]
    prometheus_cfg = yaml.safe_load((INFRA / "prometheus" / "prometheus.yml").read_text())
    assert prometheus_cfg["scrape_configs"][0]["static_configs"][0]["targets"] == ["pipeline:9464"]
    for volume in services["prometheus"]["volumes"] + services["grafana"]["volumes"]:
        source = volume.split(":", 1)[0]
        assert (INFRA / source).exists(), volume
    provisioning = yaml.safe_load((INFRA / "grafana" / "provisioning" / "dashboards" / "cxj.yml").read_text())
    assert provisioning["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"

    unit_text = (INFRA / "systemd" / "cxj-pipeline.service").read_text()
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read_string(unit_text)
    assert "cxj run --follow" in unit["Service"]["ExecStart"] and unit["Service"]["KillSignal"] == "SIGTERM"
    assert unit["Service"]["RestartPreventExitStatus"] == "2 5"
    if shutil.which("systemd-analyze"):
        local = tmp_path / "cxj-pipeline.service"
        local.write_text(unit_text.replace("/srv/cxj/.venv/bin/cxj", str(Path(sys.executable).parent / "cxj")))
        result = subprocess.run(["systemd-analyze", "verify", str(local)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and "cxj-pipeline.service" not in result.stderr, result.stderr


def test_log_formats_and_quiet(broker, topics, tmp_path):
    send_events(broker, topics, good_events("lg", 5))
    base = [sys.executable, "-m", "pipelines.cli", "run", "--once", "--bootstrap-servers", broker.bootstrap_servers,
            "--topic-tickets", topics["tickets"], "--topic-chats", topics["chats"], "--topic-surveys", topics["surveys"]]
    as_json = subprocess.run([*base, "--db", str(tmp_path / "a.duckdb"), "--log-format", "json"],
                             capture_output=True, text=True, timeout=120)
    assert as_json.returncode == 0, as_json.stderr
    lines = [json.loads(line) for line in as_json.stderr.splitlines()]  # every line is JSON
    for entry in lines:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", entry["ts"]) and entry["level"] and entry["logger"]
    batch = next(e for e in lines if "batch_id" in e)
    assert (batch["records"], batch["landed"], batch["duplicates"], batch["dead_letters"], batch["lag"]) == (5, 5, 0, 0, 0)
    assert isinstance(batch["duration_s"], float) and batch["customers"] == 5
    text = subprocess.run([*base, "--db", str(tmp_path / "b.duckdb")], capture_output=True, text=True, timeout=120)
    assert text.returncode == 0
    text_lines = text.stderr.splitlines()
    assert text_lines and all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00 (INFO|WARNING) ", line) for line in text_lines)
    quiet = subprocess.run([*base, "--db", str(tmp_path / "c.duckdb"), "--quiet"], capture_output=True, text=True, timeout=120)
    assert quiet.returncode == 0 and quiet.stderr == "" and quiet.stdout == ""
    from tests.support import table

    assert table(tmp_path / "c.duckdb", "SELECT count(*) FROM events") == [(5,)]


def test_check_json(broker, topics, db):
    send_events(broker, topics, good_events("qj", 4))
    run_once(db, broker, topics)
    result = subprocess.run([sys.executable, "-m", "pipelines.cli", "check", "--db", str(db), "--json"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["success"] is True and report["failed"] == 0 and report["total"] == len(report["results"]) >= 10
    assert {"table", "expectation", "column", "success", "unexpected_count"} <= set(report["results"][0])
    missing = subprocess.run([sys.executable, "-m", "pipelines.cli", "check", "--db", str(db.parent / "nope" / "x.duckdb"),
                              "--json"], capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and json.loads(missing.stdout)["success"] is False
