"""`cxj status` and `cxj check` while `cxj run --follow` holds the database (README "Ops",
docs/reliability.md "The data-quality suite"): both read the read replica, report what landed,
and `check` does not store its result. Real processes, real broker, real DuckDB + DuckLake."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from pipelines.storage.reader import connect
from tests.support import send_events, table


def events(n: int) -> list[dict]:
    start = datetime(2026, 9, 1, tzinfo=timezone.utc)
    return [{"event_id": f"ow-{i}", "event_type": "ticket.created", "customer_id": f"ow{i % 4}", "schema_version": 1,
             "occurred_at": (start + timedelta(minutes=i)).isoformat(), "ticket_id": f"T{i}", "channel": "web"}
            for i in range(n)]


def cxj(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True, timeout=timeout)


def test_status_and_check_read_the_replica_while_run_follow_holds_the_database(broker, topics, db: Path, tmp_path):
    kafka = ["--bootstrap-servers", broker.bootstrap_servers, "--topic-tickets", topics["tickets"],
             "--topic-chats", topics["chats"], "--topic-surveys", topics["surveys"]]
    sent = send_events(broker, topics, events(12))
    log = tmp_path / "follow.log"
    with open(log, "w") as out:
        follow = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "run", "--follow", "--db", str(db),
                                   "--poll-interval", "0.2s", *kafka], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while True:  # until readers see all 12 (the replica exists once the first batch is published)
            assert follow.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            try:
                con = connect(db)
                try:
                    if con.execute("SELECT count(*) FROM events").fetchone()[0] == sent:
                        break
                finally:
                    con.close()
            except Exception:  # not published yet
                pass
            time.sleep(0.2)

        status = cxj("status", "--db", str(db), "--json", "--max-lag", "1", *kafka)
        assert status.returncode == 0, status.stdout + status.stderr
        report = json.loads(status.stdout)
        assert report["source"] == "replica"
        assert report["total_lag"] == 0
        assert sum(p["landed_offset"] for p in report["partitions"]) == sent
        text = cxj("status", "--db", str(db), *kafka)
        assert text.returncode == 0 and text.stdout.splitlines()[0] == f"OK  {db} (read from the replica)", text.stdout

        check = cxj("check", "--db", str(db))
        assert check.returncode == 0, check.stdout + check.stderr
        assert "Traceback" not in check.stderr
        warnings = [line for line in check.stderr.splitlines() if "WARNING" in line]
        assert len(warnings) == 1 and f"the pipeline holds {db}: result not stored" in warnings[0], check.stderr
        assert follow.poll() is None, "the pipeline stopped while status/check read"
    finally:
        follow.send_signal(signal.SIGTERM)
        follow.wait(timeout=120)
    assert follow.returncode == 0, log.read_text()[-3000:]
    assert table(db, "SELECT count(*) FROM events") == [(sent,)]
    # check stored nothing while the pipeline held the file (the table appears with the first stored result)
    assert table(db, "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'quality_checks'") == [(0,)]
