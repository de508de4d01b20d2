"""Exactly-once effect: SIGKILL `cxj run --follow` at random moments while events keep coming.

Kills land in every phase of a run: while the schema is being created, inside a batch's landing
transaction, right after a batch committed, and at random moments (start-up, reading,
assembling, idle polling). The phase kills do not depend on who wins a race: the real `cxj`
runs with a small test hook (HOOK below) that, when armed, pauses the process at that exact
point and says so on stderr; the test kills it there. So a kill inside the transaction must
leave batch N wholly absent and a kill after the commit wholly there, every time. After every
kill the database is checked; at the end every table equals the one of an uninterrupted run
over the same topic contents: no event lost, none counted twice, no journey twice.

Longer soak: `CXJ_CRASH_KILLS=100 pytest -m slow tests/test_crash_recovery.py` (CI runs 10 kills).
"""
from __future__ import annotations

import os
import queue
import random
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from pipelines.kafka.simulator import generate_customer_events, to_messages
from tests.support import JOURNEY_COLUMNS, run_once, send, table, wal_bytes

KILLS = int(os.environ.get("CXJ_CRASH_KILLS", "10"))
# The follower's batches in the random-kill test, and its customers: a round of the stream (one per
# kill) must span at least three batches (more than two full ones), so that a phase kill that lets
# one batch pass still finds another to pause in. The customers grow with the kills to keep the
# rounds that large (the 10-kill form: 120 customers, 1,466 messages, rounds of 133-134).
FOLLOWER_BATCH_EVENTS = 50
CUSTOMERS = 12 * max(KILLS, 10)


# Runs the real CLI with pause points. The test arms one by writing "<phase> <spare>" to the file
# named by CXJ_TEST_ARM: at the (spare+1)-th time the process reaches that phase it prints
# "cxj-test-hook: paused at <phase> of batch N" and waits to be killed.
HOOK = r"""
import os, sys, time
from pipelines.storage import store
from pipelines.storage.models import SCHEMA_SQL

def pause(phase, batch):
    arm = os.environ["CXJ_TEST_ARM"]
    try:
        wanted, spare = open(arm).read().split()
    except (OSError, ValueError):
        return
    if wanted != phase:
        return
    if int(spare) > 0:
        open(arm, "w").write(f"{phase} {int(spare) - 1}")
        return
    os.remove(arm)
    print(f"cxj-test-hook: paused at {phase} of batch {batch}", file=sys.stderr, flush=True)
    time.sleep(3600)

advance, land, schema = store.Store._advance_offsets, store.Store.land, store.Store.apply_schema

def advance_and_pause(self, facts):
    advance(self, facts)
    pause("in_transaction", facts.batch_id)  # offsets written, COMMIT not yet reached

def land_and_pause(self, facts, *args, **kwargs):
    landed = land(self, facts, *args, **kwargs)
    pause("after_commit", facts.batch_id)
    return landed

def schema_and_pause(self):
    self.con.execute(SCHEMA_SQL.read_text())
    pause("schema", 0)  # tables created, views not yet
    schema(self)

store.Store._advance_offsets, store.Store.land, store.Store.apply_schema = advance_and_pause, land_and_pause, schema_and_pause
from pipelines.cli.main import main
sys.argv = ["cxj", *sys.argv[1:]]
sys.exit(main())
"""
PAUSED = re.compile(r"cxj-test-hook: paused at (\w+) of batch (\d+)")


class Follower:
    """One `cxj run` process (with HOOK; `--follow` unless told otherwise); a thread collects its log lines."""

    def __init__(self, db: Path, broker, topics: dict[str, str], arm: Path,
                 how: tuple[str, ...] = ("--follow", "--max-batch-events", str(FOLLOWER_BATCH_EVENTS),
                                         "--poll-interval", "0.1s")) -> None:
        """``how``: the run's mode and batch options (a following run of 50-event batches unless told)."""
        cmd = [sys.executable, "-c", HOOK, "run", *how, "--verbose", "--db", str(db),
               "--bootstrap-servers", broker.bootstrap_servers,
               "--topic-tickets", topics["tickets"], "--topic-chats", topics["chats"], "--topic-surveys", topics["surveys"]]
        env = dict(os.environ, CXJ_REPLICA="off", CXJ_TEST_ARM=str(arm))  # no read replica: keeps restarts fast
        self.arm = arm
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stderr), daemon=True)
        self.reader.start()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.reader.join(10)

    def kill_when_paused(self, phase: str, timeout: float, spare: int = 0, armed: bool = False) -> int:
        """Arms the hook, waits (with a deadline) until the process pauses there, kills it; the batch id."""
        if not armed:
            self.arm.write_text(f"{phase} {spare}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            paused = [PAUSED.search(line) for line in self.lines]
            hits = [m for m in paused if m and m.group(1) == phase]
            if hits:
                self.kill()
                return int(hits[-1].group(2))
            time.sleep(0.02)
        self.kill()
        self.arm.unlink(missing_ok=True)
        raise AssertionError(f"never paused at {phase} within {timeout}s:\n" + "".join(self.lines[-30:]))

    def wait_for(self, pattern: str, timeout: float, after: int = 0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            if any(re.search(pattern, line) for line in self.lines[after:]):
                return True
            time.sleep(0.05)
        return any(re.search(pattern, line) for line in self.lines[after:])

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=120)
        self.reader.join(10)
        return "".join(self.lines)


def snapshot(db: Path) -> dict[str, list]:
    return {
        "events": table(db, "SELECT * EXCLUDE (batch_id, landed_at) FROM events ORDER BY event_id"),
        "journeys": table(db, f"SELECT {JOURNEY_COLUMNS} FROM journeys ORDER BY journey_id"),
        "journey_events": table(db, "SELECT * EXCLUDE (batch_id) FROM journey_events ORDER BY event_id"),
        "dead_letters": table(db, 'SELECT * EXCLUDE (batch_id, landed_at) FROM dead_letters ORDER BY topic, "partition", "offset"'),
        "offsets": table(db, 'SELECT topic, "partition", next_offset FROM pipeline_offsets ORDER BY ALL'),
    }


def consistent(db: Path) -> None:
    """What must hold after any kill: each committed batch is whole, nothing is there twice."""
    if not db.exists() or table(db, "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'pipeline_batches'") != [(1,)]:
        return  # killed before the schema was complete: the restart creates the rest
    assert table(db, "SELECT count(*) - count(DISTINCT event_id) FROM events") == [(0,)]
    assert table(db, "SELECT count(*) - count(DISTINCT journey_id) FROM journeys") == [(0,)]
    assert table(db, "SELECT count(*) FROM pipeline_batches WHERE consumed <> landed + duplicates + dead_letters") == [(0,)]
    # every landed event and dead letter lies below the stored offset of its partition
    assert table(db, """SELECT count(*) FROM (
                            SELECT source_topic AS topic, source_partition AS "partition", source_offset AS "offset" FROM events
                            UNION ALL SELECT topic, "partition", "offset" FROM dead_letters) x
                        LEFT JOIN pipeline_offsets o USING (topic, "partition")
                        WHERE o.next_offset IS NULL OR x."offset" >= o.next_offset""") == [(0,)]
    # the batches' ranges add up to the stored offsets (fresh topics start at 0): nothing read twice or skipped
    assert table(db, """SELECT (SELECT coalesce(sum(next_offset), 0) FROM pipeline_offsets)
                             = (SELECT coalesce(sum(consumed), 0) FROM pipeline_batches)""") == [(True,)]


class Producer:
    """Keeps sending while the kills go on: each round in small chunks spread over ~1-2 s."""

    def __init__(self, broker, topics: dict[str, str]) -> None:
        self.broker, self.topics = broker, topics
        self.rounds: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (messages := self.rounds.get()) is not None:
            for i in range(0, len(messages), 20):
                send(self.broker, self.topics, messages[i:i + 20])
                time.sleep(0.1)

    def close(self) -> None:
        self.rounds.put(None)
        self.thread.join(120)


@pytest.mark.slow  # CI runs the short form (10 kills); CXJ_CRASH_KILLS=100 for a soak
def test_sigkill_at_random_moments_loses_and_doubles_nothing(broker, topics, tmp_path, monkeypatch):
    monkeypatch.setenv("CXJ_REPLICA", "off")
    rng = random.Random(1234)
    events = generate_customer_events(CUSTOMERS, 99, datetime(2026, 8, 1, tzinfo=timezone.utc))
    messages = to_messages(events, 99, out_of_order=0.05, duplicates=0.05, malformed=0.02)
    db = tmp_path / "crashy.duckdb"
    arm = tmp_path / "arm"
    phases = ["in_transaction"] * (KILLS // 3) + ["after_commit"] * (KILLS // 6) + ["schema"] * (KILLS // 6)
    modes = phases + ["random"] * (KILLS - len(phases))
    rng.shuffle(modes)
    rounds = [messages[i::KILLS + 1] for i in range(KILLS + 1)]
    assert min(len(r) for r in rounds) > 2 * FOLLOWER_BATCH_EVENTS, "a round must span three batches (see CUSTOMERS)"
    sending = Producer(broker, topics)
    kills = {"in_transaction": 0, "after_commit": 0, "schema": 0, "random": 0}
    known_landed = 0  # batches the test knows committed: let through before a phase kill, or killed after commit
    if modes[0] == "schema":
        arm.write_text("schema 0")
    proc = Follower(db, broker, topics, arm)
    try:
        for index, (mode, round_messages) in enumerate(zip(modes, rounds)):
            sending.rounds.put(round_messages)
            if mode == "random":
                # the kill moment is the test's random choice (start-up, reading, assembling,
                # landing or idle), not a wait for something; whatever it hits must be consistent
                time.sleep(rng.uniform(0.0, 6.0))
                proc.kill()
            elif mode == "schema":  # armed before this process started (below), so it cannot pass the point first
                proc.kill_when_paused("schema", timeout=120, armed=True)
            else:
                spare = rng.randint(0, 1)
                batch = proc.kill_when_paused(mode, timeout=120, spare=spare)
                there = table(db, f"SELECT count(*) FROM pipeline_batches WHERE batch_id = {batch}")[0][0]
                events_of_batch = table(db, f"SELECT count(*) FROM events WHERE batch_id = {batch}")[0][0]
                if mode == "in_transaction":  # killed before COMMIT: none of the batch is there
                    assert (there, events_of_batch) == (0, 0), f"batch {batch} partly landed"
                else:  # killed after COMMIT: all of it is there
                    assert there == 1, f"batch {batch} committed but is missing"
                    assert table(db, f"SELECT landed FROM pipeline_batches WHERE batch_id = {batch}") == [(events_of_batch,)]
                known_landed += spare + (mode == "after_commit")
            kills[mode] += 1
            consistent(db)
            if modes[index + 1:index + 2] == ["schema"]:
                arm.write_text("schema 0")
            proc = Follower(db, broker, topics, arm)
        sending.rounds.put(rounds[-1])
        sending.close()
        # the last restart lands part of the stream before it is stopped cleanly
        assert proc.wait_for(r"INFO +batch \d+: ", 120), "".join(proc.lines[-30:])
    finally:
        sending.close()
        log = proc.stop()
    assert proc.proc.returncode == 0, log[-3000:]
    assert "Traceback" not in log
    landed_by_killed_runs = table(db, "SELECT count(*) FROM pipeline_batches")[0][0]
    run_once(db, broker, topics)  # one more restart lands whatever is left
    assert sum(kills.values()) == KILLS >= 10
    assert kills["in_transaction"] == KILLS // 3 and kills["after_commit"] == KILLS // 6 and kills["schema"] == KILLS // 6
    assert landed_by_killed_runs >= known_landed + 1  # + the clean last run's batch

    reference = tmp_path / "reference.duckdb"
    run_once(reference, broker, topics)
    crashed, clean = snapshot(db), snapshot(reference)
    for name in clean:
        assert crashed[name] == clean[name], f"{name} differs after {KILLS} kills ({kills})"
    consistent(db)
    assert table(db, "SELECT sum(consumed) FROM pipeline_batches") == [(len(messages),)]
    print(f"kills {kills}; {landed_by_killed_runs} batches landed by killed runs ({known_landed} known to the test)")


def test_a_kill_while_a_backlog_leaves_a_large_log_loses_and_doubles_nothing(broker, topics, tmp_path):
    """While records wait behind its batches, `run --once` checkpoints only once the write-ahead
    log reaches ``BACKLOG_CHECKPOINT_WAL_BYTES`` (128 MB), so a kill then leaves several committed
    batches in the log alone, past the 16 MB the store otherwise keeps it under. Killed right
    after such a commit, every batch in the log is there when the store is opened again; killed
    inside a later batch's transaction, that batch is wholly absent. The store then ends equal to
    an uninterrupted run's, and every record sent is accounted for once."""
    from pipelines.storage.store import CHECKPOINT_WAL_BYTES

    events = generate_customer_events(4_200, 7, datetime(2026, 8, 1, tzinfo=timezone.utc))
    messages = to_messages(events, 7, out_of_order=0.05, duplicates=0.02, malformed=0.01)
    sent = send(broker, topics, messages)
    db, arm = tmp_path / "backlog.duckdb", tmp_path / "arm"
    how = ("--once", "--max-batch-events", "5000")

    run = Follower(db, broker, topics, arm, how)
    batch = run.kill_when_paused("after_commit", timeout=300, spare=5)  # the sixth batch, committed
    log_bytes = wal_bytes(db)
    assert log_bytes > CHECKPOINT_WAL_BYTES, f"the log ({log_bytes} bytes) never grew past one batch's checkpoint"
    assert batch == 6
    print(f"killed after batch 6 with a log of {log_bytes / 2**20:.1f} MB")
    consistent(db)  # opened from the file and its log
    assert table(db, "SELECT count(*), sum(consumed) FROM pipeline_batches") == [(6, 30_000)]

    run = Follower(db, broker, topics, arm, how)  # replays and checkpoints the log at its open
    batch = run.kill_when_paused("in_transaction", timeout=300, spare=1)  # the new run's second batch
    consistent(db)
    assert table(db, f"SELECT count(*) FROM events WHERE batch_id = {batch}") == [(0,)]
    assert table(db, "SELECT max(batch_id), sum(consumed) FROM pipeline_batches") == [(batch - 1, 35_000)]

    run_once(db, broker, topics, max_batch_events=5000)  # the rest, cleanly
    reference = tmp_path / "reference.duckdb"
    run_once(reference, broker, topics, max_batch_events=5000)
    crashed, clean = snapshot(db), snapshot(reference)
    for name in clean:
        assert crashed[name] == clean[name], f"{name} differs after the kills"
    consistent(db)
    assert table(db, "SELECT sum(consumed) FROM pipeline_batches") == [(sent,)] and sent > 40_000


# Opens a store as the writer does, pausing (to be killed) in the one transaction that gives an
# older store's journey_events its batch_id: after the column is added, before it is filled.
UPGRADE_HOOK = r"""
import logging, sys, time
from pipelines.storage import store

logging.basicConfig(level=logging.INFO, format="%(message)s")

class PauseAfterAddingTheColumn:
    def __init__(self, con):
        self.con = con
    def execute(self, statement, *args):
        result = self.con.execute(statement, *args)
        if statement.startswith("ALTER TABLE journey_events ADD COLUMN batch_id"):
            print("cxj-test-hook: paused after adding the column", file=sys.stderr, flush=True)
            time.sleep(3600)
        return result
    def __getattr__(self, name):
        return getattr(self.con, name)

stamp = store.Store._stamp_journey_events

def stamp_and_pause(self):
    con, self.con = self.con, PauseAfterAddingTheColumn(self.con)
    try:
        stamp(self)
    finally:
        self.con = con

store.Store._stamp_journey_events = stamp_and_pause
store.Store(sys.argv[1]).close()
"""


def test_a_kill_while_an_older_store_gains_the_links_batch_leaves_it_as_it_was_and_the_next_open_fills_it(
        broker, topics, tmp_path):
    """The upgrade of a store landed before journey_events had a batch_id (added, then filled
    from journeys) is one transaction: a writer killed in the middle of it leaves the store as
    the older version left it, and the next open does the whole upgrade. Were the column added
    in a transaction of its own, the kill would leave it there, empty, and the next open would
    take the store for upgraded: links without a batch, which the replica publish then skips."""
    from pipelines.storage.store import Store

    db = tmp_path / "older.duckdb"
    events = generate_customer_events(40, 23, datetime(2026, 8, 1, tzinfo=timezone.utc))
    send(broker, topics, to_messages(events, 23, out_of_order=0.05, duplicates=0.05, malformed=0.02))
    run_once(db, broker, topics, max_batch_events=150)
    links = table(db, "SELECT event_id, journey_id, customer_id FROM journey_events ORDER BY ALL")
    assert len(links) > 100 and table(db, "SELECT count(DISTINCT batch_id) FROM journey_events")[0][0] > 1
    import duckdb

    with duckdb.connect(str(db)) as con:  # as the earlier version created it
        con.execute("ALTER TABLE journey_events DROP COLUMN batch_id")

    def landed(db: Path) -> dict[str, list]:
        return {
            "events": table(db, "SELECT * FROM events ORDER BY event_id"),
            "journeys": table(db, f"SELECT {JOURNEY_COLUMNS}, batch_id FROM journeys ORDER BY journey_id"),
            "links": table(db, "SELECT event_id, journey_id, customer_id FROM journey_events ORDER BY ALL"),
            "batches": table(db, "SELECT * FROM pipeline_batches ORDER BY batch_id"),
            "offsets": table(db, "SELECT * FROM pipeline_offsets ORDER BY ALL"),
        }
    before = landed(db)
    assert before["links"] == links

    proc = subprocess.Popen([sys.executable, "-c", UPGRADE_HOOK, str(db)], stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, CXJ_REPLICA="off"))
    seen = []
    for line in proc.stderr:  # a line per log record: the process pauses, or ends without pausing
        seen.append(line)
        if "cxj-test-hook: paused" in line:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(60)
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, "".join(seen)
    assert any("adding journey_events.batch_id" in line for line in seen), "".join(seen)

    # killed inside the transaction: nothing of the upgrade is there, nothing else changed
    assert "batch_id" not in {row[1] for row in table(db, "PRAGMA table_info('journey_events')")}
    assert landed(db) == before
    consistent(db)

    Store(db).close()  # the next writer's open
    assert table(db, """SELECT count(*) FROM journey_events l JOIN journeys j USING (journey_id)
                        WHERE l.batch_id IS NOT DISTINCT FROM j.batch_id""") == [(len(links),)]
    assert landed(db) == before
