"""`cxj run --follow --metrics-port`: scrape the real endpoint while batches land."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import defaultdict
from datetime import datetime, timedelta, timezone

from prometheus_client.parser import text_string_to_metric_families

from tests.support import free_port, send, send_events, table


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def wait_for(port: int, predicate, timeout: float = 60.0) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    last: dict[str, float] = {}
    while time.monotonic() < deadline:
        try:
            last = scrape(port)
            if predicate(last):
                return last
        except OSError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"metrics never matched; last scrape: { {k: v for k, v in last.items() if k.startswith('cxj_')} }")


def events(prefix: str, n: int) -> list[dict]:
    start = datetime(2026, 9, 1, tzinfo=timezone.utc)
    evs = [{"event_id": f"{prefix}-{i}", "event_type": "ticket.created", "customer_id": f"m{i}", "schema_version": 1,
            "occurred_at": (start + timedelta(minutes=i)).isoformat(), "ticket_id": f"{prefix}T{i}", "channel": "email"}
           for i in range(n)]
    return evs


def test_metrics_move_while_following(broker, topics, tmp_path):
    port = free_port()
    send_events(broker, topics, events("a", 20))
    cmd = [sys.executable, "-m", "pipelines.cli", "run", "--follow", "--db", str(tmp_path / "m.duckdb"),
           "--metrics-port", str(port), "--poll-interval", "0.2s", "--bootstrap-servers", broker.bootstrap_servers,
           "--topic-tickets", topics["tickets"], "--topic-chats", topics["chats"], "--topic-surveys", topics["surveys"]]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        # all 20 were sent before the start: the first batch takes them all
        first = wait_for(port, lambda m: m.get('cxj_events_landed_total{event_type="ticket.created"}', 0) >= 20)
        assert first['cxj_events_landed_total{event_type="ticket.created"}'] == 20
        assert first["cxj_lag_messages"] == 0
        assert first["cxj_batches_total"] == 1
        assert first["cxj_end_to_end_latency_seconds_count"] == 20
        send_events(broker, topics, events("b", 15))
        send(broker, topics, [("tickets", b"m0", b'{"event_id": "bad"}')])
        # the two sends may land in one batch or two: wait until both are in, whatever the split
        second = wait_for(port, lambda m: m.get('cxj_events_landed_total{event_type="ticket.created"}', 0) >= 35
                          and m.get('cxj_dead_letters_total{reason="unknown_schema_version"}', 0) >= 1)
        assert second['cxj_events_landed_total{event_type="ticket.created"}'] == 35
        assert second['cxj_dead_letters_total{reason="unknown_schema_version"}'] == 1
        assert second["cxj_batches_total"] > first["cxj_batches_total"]
        assert second["cxj_batch_duration_seconds_count"] == second["cxj_batches_total"]
        assert second["cxj_processing_freshness_seconds"] >= 0
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert "stopped cleanly" in err
    # nothing arrived after the last scrape, so the counters saw every batch that landed
    assert table(tmp_path / "m.duckdb", "SELECT count(*), sum(landed), sum(dead_letters) FROM pipeline_batches") == [
        (second["cxj_batches_total"], 35, 1)]


# ---------------------------------------------------------------- lag that never lies


def scrape_families(port: int, host: str = "127.0.0.1") -> dict[str, list]:
    """Every sample of a real scrape, by metric family name: [(labels, value), ...]."""
    text = urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5).read().decode()
    families: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            families.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return families


def per_partition(families: dict[str, list], name: str) -> dict[tuple[str, int], float]:
    return {(labels["topic"], int(labels["partition"])): value for labels, value in families.get(name, [])}


class AckedProducer:
    """Sends on a real producer and remembers when each message was handed over and acknowledged.

    This is the test's own ground truth for the broker's end offsets: at any time t the end of a
    partition lies between the messages acknowledged by t and the messages handed over by t.
    """

    def __init__(self, settings) -> None:
        from kafka import KafkaProducer

        self.producer = KafkaProducer(**settings.client_kwargs(), linger_ms=5, acks="all")
        self.lock = threading.Lock()
        self.sent_at: list[float] = []
        self.acked: list[tuple[float, int]] = []  # (time, partition)

    def send(self, topic: str, events: list[dict]) -> None:
        for e in events:
            with self.lock:
                self.sent_at.append(time.time())
            future = self.producer.send(topic, key=e["customer_id"].encode(), value=json.dumps(e).encode())
            future.add_callback(lambda meta: self._acked(meta.partition))

    def _acked(self, partition: int) -> None:
        with self.lock:
            self.acked.append((time.time(), partition))

    def flush(self) -> None:
        self.producer.flush()

    def sent_by(self, t: float) -> int:
        with self.lock:
            return sum(1 for s in self.sent_at if s <= t)

    def acked_by(self, t: float) -> dict[int, int]:
        counts: dict[int, int] = defaultdict(int)
        with self.lock:
            for at, partition in self.acked:
                if at <= t:
                    counts[partition] += 1
        return counts

    def close(self) -> None:
        self.producer.close()


def test_lag_gauge_is_true_at_every_scrape_under_load(broker, topics, tmp_path):
    """Producers keep sending while `run --follow` lands in small batches; every scrape's lag is
    the broker's end minus the landed offsets, exact up to the age the scrape itself reports."""
    port = free_port()
    db = tmp_path / "load.duckdb"
    producer = AckedProducer(broker)
    producer.send(topics["tickets"], events("w0", 2000))
    producer.flush()
    cmd = [sys.executable, "-m", "pipelines.cli", "run", "--follow", "--db", str(db), "--log-format", "json",
           "--metrics-port", str(port), "--poll-interval", "0.2s", "--max-batch-events", "1500",
           "--bootstrap-servers", broker.bootstrap_servers,
           "--topic-tickets", topics["tickets"], "--topic-chats", topics["chats"], "--topic-surveys", topics["surveys"]]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    scrapes: list[tuple[float, float, dict]] = []
    try:
        wait_for(port, lambda m: m.get("cxj_batches_total", 0) >= 1)
        sender = threading.Thread(target=lambda: [producer.send(topics["tickets"], events(f"w{k}", 3000)) or time.sleep(0.5)
                                                  for k in range(1, 4)])
        sender.start()
        while sender.is_alive():
            before = time.time()
            families = scrape_families(port)
            scrapes.append((before, time.time(), families))
            time.sleep(0.2)
        sender.join()
        producer.flush()
        total_sent = producer.sent_by(time.time())
        assert total_sent == 11_000
        deadline = time.monotonic() + 90
        while True:  # until everything landed and the look-up that says so is fresh
            before = time.time()
            families = scrape_families(port)
            scrapes.append((before, time.time(), families))
            ends = per_partition(families, "cxj_end_offset")
            if sum(ends.values()) == total_sent and families["cxj_lag_messages"][0][1] == 0:
                break
            assert time.monotonic() < deadline, f"never caught up; last lag {families['cxj_lag_messages']}"
            time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        producer.close()
    assert proc.returncode == 0, err[-2000:]

    under_load = 0
    previous_landed: dict = {}
    for before, after, families in scrapes:
        lag = per_partition(families, "cxj_partition_lag_messages")
        landed = per_partition(families, "cxj_landed_offset")
        ends = per_partition(families, "cxj_end_offset")
        age = families["cxj_end_offsets_age_seconds"][0][1]
        tickets = {k: v for k, v in ends.items() if k[0] == topics["tickets"]}
        assert set(lag) == set(ends)
        for key, end in ends.items():
            assert lag[key] == end - landed.get(key, 0) >= 0
            assert landed.get(key, 0) >= previous_landed.get(key, 0)  # landing only moves forward
        assert families["cxj_lag_messages"][0][1] == sum(lag.values())
        # the broker's true end: at least what was acknowledged before the look-up, at most what was sent by now
        assert sum(tickets.values()) <= producer.sent_by(after)
        acked = producer.acked_by(before - age)
        for partition, count in acked.items():
            assert tickets[(topics["tickets"], partition)] >= count, (partition, count, tickets, age)
        assert 0 <= age < 5, age
        assert families["cxj_broker_up"][0][1] == 1
        if families["cxj_lag_messages"][0][1] >= 1000:
            under_load += 1
        previous_landed = landed
    assert under_load >= 2, "the load never built up a lag: the test did not exercise what it claims"

    # the last scrape's landed offsets are the ones stored with the results
    stored = {(t, p): o for t, p, o in table(db, 'SELECT topic, "partition", next_offset FROM pipeline_offsets')}
    final_landed = per_partition(scrapes[-1][2], "cxj_landed_offset")
    assert {k: v for k, v in final_landed.items() if v} == {k: v for k, v in stored.items() if v}
    assert sum(stored.values()) == total_sent

    # the batch log line reports today's lag too (not the end offsets the batch was planned with)
    batch_lines = [json.loads(line) for line in err.splitlines() if line.startswith("{") and '"batch_id"' in line]
    assert batch_lines, err[-2000:]
    done = 0
    lagging_lines = 0
    for entry in batch_lines:
        done += entry["records"]
        logged_at = datetime.fromisoformat(entry["ts"]).timestamp()
        assert entry["lag"] <= producer.sent_by(logged_at + 0.001) - done
        assert entry["lag"] >= sum(producer.acked_by(logged_at - 1.0).values()) - done
        lagging_lines += entry["lag"] > 0
    assert lagging_lines >= 1
    assert done == total_sent


def _other_local_address() -> str:
    """An address of this machine that is not 127.0.0.1 (Linux answers all of 127/8 on lo)."""
    return "127.0.0.2"


def test_metrics_bind_localhost_unless_told(broker, topics, tmp_path):
    base = [sys.executable, "-m", "pipelines.cli", "run", "--follow", "--poll-interval", "0.2s",
            "--bootstrap-servers", broker.bootstrap_servers,
            "--topic-tickets", topics["tickets"], "--topic-chats", topics["chats"], "--topic-surveys", topics["surveys"]]
    for extra, reachable_elsewhere in (([], False), (["--metrics-host", "0.0.0.0"], True)):
        port = free_port()
        proc = subprocess.Popen(base + ["--db", str(tmp_path / f"h{port}.duckdb"), "--metrics-port", str(port), *extra],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(port, lambda m: "cxj_lag_messages" in m)
            with socket.socket() as s:
                s.settimeout(2)
                result = s.connect_ex((_other_local_address(), port))
            assert (result == 0) is reachable_elsewhere, (extra, result)
        finally:
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err[-2000:]


def test_a_scrape_shows_every_figure_of_a_batch_or_none(tmp_path):
    """The endpoint is scraped on its own thread while batches land: in every scrape, the
    events landed agree with the latencies observed and the batches with their durations."""
    from pipelines.local.microbatch import Positions
    from pipelines.ops.prometheus import MetricsListener
    from pipelines.storage.store import LandedBatch, Store

    batches, per_batch = 300, 5
    store = Store(tmp_path / "m.duckdb")
    store.con.execute(f"""INSERT INTO events (event_id, event_type, occurred_at, customer_id, payload, source_topic,
                              source_partition, source_offset, kafka_timestamp, batch_id, landed_at)
                          SELECT 'e' || i, 'ticket.created', TIMESTAMPTZ '2026-01-01 00:00:00+00', 'c' || i, '{{}}', 't',
                                 0, i, TIMESTAMPTZ '2026-01-01 00:00:00+00', 1 + i // {per_batch}, now()
                          FROM range({batches * per_batch}) t(i)""")
    port = free_port()
    listener = MetricsListener(store, port=port)
    torn: list[dict[str, float]] = []
    scrapes = [0]
    done = threading.Event()

    def scrape_until_done() -> None:
        while not done.is_set():
            m = scrape(port)
            scrapes[0] += 1
            landed = m.get('cxj_events_landed_total{event_type="ticket.created"}', 0.0)
            if (landed != m["cxj_end_to_end_latency_seconds_count"]
                    or m["cxj_batches_total"] != m["cxj_batch_duration_seconds_count"]
                    or landed != per_batch * m["cxj_batches_total"]):
                torn.append({k: v for k, v in m.items() if k.startswith("cxj_")})

    scraper = threading.Thread(target=scrape_until_done)
    scraper.start()
    try:
        for batch_id in range(1, batches + 1):
            listener.batch_landed(LandedBatch(batch_id=batch_id, consumed=per_batch, landed=per_batch, duplicates=0,
                                              dead_letters=0, customers_touched=per_batch, journeys_written=0,
                                              duration_s=0.1), Positions(landed={}, ends={}))
    finally:
        done.set()
        scraper.join(timeout=30)
        listener.close()
        store.close()
    assert scrapes[0] >= 20, scrapes  # scraped all along, not once at the end
    assert torn == [], torn[:3]
