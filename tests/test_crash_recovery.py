"""Exactly-once effect: SIGKILL `cxj run --follow` at random moments while events keep coming.

After at least 10 kills and restarts, every table equals the one of an uninterrupted run over
the same topic contents: no event lost, none counted twice, no journey twice.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone

from pipelines.simulate import generate_customer_events, to_messages
from tests.support import JOURNEY_COLUMNS, run_once, send, table

KILLS = 10


def follow(db, broker, topics) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "pipelines.cli", "run", "--follow", "--quiet", "--db", str(db),
           "--max-batch-events", "150", "--poll-interval", "0.1s", "--bootstrap-servers", broker.bootstrap_servers,
           "--topic-tickets", topics["tickets"], "--topic-chats", topics["chats"], "--topic-surveys", topics["surveys"]]
    env = dict(os.environ, CXJ_REPLICA="off")  # the read replica is not under test here; keep restarts fast
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)


def snapshot(db) -> dict[str, list]:
    return {
        "events": table(db, "SELECT * EXCLUDE (batch_id, landed_at) FROM events ORDER BY event_id"),
        "journeys": table(db, f"SELECT {JOURNEY_COLUMNS} FROM journeys ORDER BY journey_id"),
        "journey_events": table(db, "SELECT * FROM journey_events ORDER BY event_id"),
        "dead_letters": table(db, 'SELECT * EXCLUDE (batch_id, landed_at) FROM dead_letters ORDER BY topic, "partition", "offset"'),
        "offsets": table(db, 'SELECT topic, "partition", next_offset FROM pipeline_offsets ORDER BY ALL'),
    }


def test_sigkill_at_random_moments_loses_and_doubles_nothing(broker, topics, tmp_path):
    rng = random.Random(1234)
    events = generate_customer_events(120, 99, datetime(2026, 8, 1, tzinfo=timezone.utc))
    messages = to_messages(events, 99, out_of_order=0.05, duplicates=0.05, malformed=0.02)
    rounds = [messages[i::KILLS + 2] for i in range(KILLS + 2)]
    db = tmp_path / "crashy.duckdb"
    kills = 0
    proc = follow(db, broker, topics)
    try:
        for round_messages in rounds:
            send(broker, topics, round_messages)
            time.sleep(rng.uniform(2.0, 6.0))  # start-up takes ~2 s; then inside a batch: reading, assembling or landing
            if kills < KILLS:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
                proc = follow(db, broker, topics)
        time.sleep(3)
    finally:
        proc.send_signal(signal.SIGTERM)  # the last restart stops cleanly, mid-stream
        _, err = proc.communicate(timeout=120)
    landed_by_killed_runs = table(db, "SELECT count(*) FROM pipeline_batches")[0][0]
    run_once(db, broker, topics)  # one more restart lands whatever is left
    assert kills == KILLS
    assert proc.returncode == 0, err[-3000:]
    assert "Traceback" not in err

    reference = tmp_path / "reference.duckdb"
    run_once(reference, broker, topics)
    crashed, clean = snapshot(db), snapshot(reference)
    for name in clean:
        assert crashed[name] == clean[name], f"{name} differs after {KILLS} kills"
    assert table(db, "SELECT count(*) - count(DISTINCT journey_id) FROM journeys") == [(0,)]
    assert table(db, "SELECT count(*) FROM pipeline_batches WHERE consumed <> landed + duplicates + dead_letters") == [(0,)]
    assert table(db, "SELECT sum(consumed) FROM pipeline_batches") == [(len(messages),)]
    assert landed_by_killed_runs >= KILLS // 2  # the killed runs really made progress between kills
