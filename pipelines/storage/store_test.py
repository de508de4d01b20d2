"""Unit tests of the store's parts that need no pipeline: which landed journeys a batch leaves
as landed (history pruning) and the row id ranges a touched customer's rows are read by."""
from __future__ import annotations

import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.storage.store import MAX_JOURNEY_BATCHES, ONE_STEP_BATCHES, ROW_BLOCK, Store, row_ranges, settled_prefix

DAY = 86_400 * 1_000_000
H = 7 * DAY  # the longest look-back of the journey rules by default (durable / repeat contact)


def j(journey_id: str, status: str, start_day: float, last_day: float, new_day: float) -> tuple[str, str, int, int, int]:
    return (journey_id, status, int(start_day * DAY), int(last_day * DAY), int(new_day * DAY))


def test_journeys_ended_long_before_the_batch_and_the_latest_journey_are_settled():
    journeys = [j("a", "resolved", 0, 1, 60), j("b", "unresolved", 15, 16, 60), j("c", "resolved", 40, 41, 60)]
    # cutoff = min(new 60, latest 41) - 7 = 34: a and b ended before it, c did not
    assert settled_prefix(journeys, H) == ["a", "b"]


def test_the_cutoff_is_strict():
    journeys = [j("a", "resolved", 0, 34, 60), j("c", "resolved", 41, 41, 60)]
    assert settled_prefix(journeys, H) == []  # a ended exactly at the cutoff (41 - 7)
    journeys = [j("a", "resolved", 0, 33.99, 60), j("c", "resolved", 41, 41, 60)]
    assert settled_prefix(journeys, H) == ["a"]


def test_an_open_journey_ends_the_prefix_even_if_later_ones_ended_long_ago():
    journeys = [j("a", "open", 0, 1, 90), j("b", "resolved", 10, 11, 90), j("c", "resolved", 60, 61, 90)]
    assert settled_prefix(journeys, H) == []


def test_a_late_batch_event_settles_nothing_after_it():
    journeys = [j("a", "resolved", 0, 1, 5), j("b", "resolved", 20, 21, 5)]
    assert settled_prefix(journeys, H) == []


def test_the_latest_landed_event_bounds_the_cutoff_too():
    # durability of a is undecided while the customer's latest event is within 7 days of it
    journeys = [j("a", "resolved", 0, 1, 100)]
    assert settled_prefix(journeys, H) == []
    journeys = [j("a", "resolved", 0, 1, 100), j("b", "resolved", 9, 9, 100)]
    assert settled_prefix(journeys, H) == ["a"]


def test_a_settled_journey_reaching_past_the_next_start_is_given_up_with_everything_after_it():
    # a was reopened after b and c started; c is still open: a and b both reach past c's start? a does
    journeys = [j("a", "resolved", 0, 35, 90), j("b", "resolved", 20, 21, 90), j("c", "open", 30, 80, 90)]
    assert settled_prefix(journeys, H) == []
    # the same, but a's last event precedes c's start: a and b settle
    journeys = [j("a", "resolved", 0, 29, 90), j("b", "resolved", 20, 21, 90), j("c", "open", 30, 80, 90)]
    assert settled_prefix(journeys, H) == ["a", "b"]
    # only the first journey reaches past the second's start: the walk back stops at zero
    journeys = [j("a", "resolved", 0, 25, 90), j("b", "open", 20, 85, 90)]
    assert settled_prefix(journeys, H) == []


def test_every_journey_can_settle_when_the_batch_starts_a_new_one_far_later():
    journeys = [j("a", "resolved", 0, 1, 200), j("b", "resolved", 50, 51, 200), j("c", "unresolved", 100, 101, 200)]
    # cutoff = min(200, 101) - 7 = 94: c (last 101) stays, a and b settle
    assert settled_prefix(journeys, H) == ["a", "b"]
    assert settled_prefix([], H) == []


@given(st.lists(st.tuples(st.integers(0, 10**7), st.integers(0, 10**6)), max_size=80), st.integers(1, 40))
@settings(max_examples=300, deadline=None)
def test_row_ranges_cover_every_stretch_in_few_sorted_ranges(starts_and_lengths, max_ranges):
    stretches = [(first, first + length) for first, length in starts_and_lengths]
    ranges = row_ranges(stretches, max_ranges)
    assert len(ranges) <= max_ranges
    assert all(first <= last for first, last in ranges)
    assert all(a[1] < b[0] for a, b in zip(ranges, ranges[1:]))  # sorted, apart
    for first, last in stretches:
        assert any(lo <= first and last <= hi for lo, hi in ranges), (first, last)
    assert (not stretches) == (not ranges)


def test_stretches_closer_than_a_row_group_are_read_as_one_range_and_far_ones_apart():
    near = [(0, 10), (10 + ROW_BLOCK, 20 + ROW_BLOCK)]
    assert row_ranges(near) == [(0, 20 + ROW_BLOCK)]
    far = [(5 * ROW_BLOCK, 5 * ROW_BLOCK + 3), (0, 10)]
    assert row_ranges(far) == [(0, 10), (5 * ROW_BLOCK, 5 * ROW_BLOCK + 3)]
    # over the cap, the two with the smallest gap are merged first
    three = [(0, 1), (3 * ROW_BLOCK, 3 * ROW_BLOCK), (10 * ROW_BLOCK, 10 * ROW_BLOCK)]
    assert row_ranges(three, max_ranges=2) == [(0, 3 * ROW_BLOCK), (10 * ROW_BLOCK, 10 * ROW_BLOCK)]


def links_in_five_row_groups(con: duckdb.DuckDBPyConnection) -> None:
    """614k links in five row groups: customers of 1,000 consecutive rows ('c0', 'c1', ...),
    and 'spread', with a row in every row group."""
    con.execute("""INSERT INTO journey_events
                   SELECT 'e' || i, 'j' || i, CASE WHEN i % 100000 = 7 THEN 'spread' ELSE 'c' || (i // 1000) END, 1
                   FROM range(5 * 122880) t(i)""")


def test_touched_rows_finds_exactly_the_touched_customers_rows_inside_an_open_transaction(tmp_path):
    """On a real store spanning several row groups: the two-step condition picks the same rows
    as a plain customer filter, before and inside a transaction that inserted, moved and deleted
    rows of those customers (new rows get row ids far past the stored ones)."""
    store = Store(tmp_path / "rows.duckdb")
    try:
        con = store.con
        links_in_five_row_groups(con)  # (the customer with a row in every row group is not touched here)
        con.execute("""CREATE TEMP TABLE batch_customers AS
                       SELECT * FROM (VALUES ('c0'), ('c3'), ('c600'), ('nobody')) t(customer_id)""")
        con.execute("INSERT INTO journey_events SELECT 'late-' || i, 'j', 'c3', 2 FROM range(3) t(i)")

        def both(again: bool = False) -> tuple[list[str], list[str]]:
            plain = "customer_id IN (SELECT customer_id FROM batch_customers)"
            two_steps = store._touched_rows("journey_events", again=again)
            return ([r[0] for r in con.execute(f"SELECT event_id FROM journey_events WHERE {plain} ORDER BY 1").fetchall()],
                    [r[0] for r in con.execute(f"SELECT event_id FROM journey_events WHERE {two_steps} ORDER BY 1").fetchall()])

        plain, two_steps = both()
        assert len(plain) == 999 + 1000 + 999 + 3 and two_steps == plain
        assert "rowid BETWEEN" in store._touched_rows("journey_events")  # large enough for two steps
        assert "rowid" not in store._touched_rows("journeys")  # empty: one step
        with pytest.raises(ValueError, match="pipeline_batches"):  # its name would go into SQL text as it is
            store._touched_rows("pipeline_batches")
        con.execute("BEGIN TRANSACTION")
        con.execute("INSERT INTO journey_events SELECT 'new-' || i, 'j', 'c' || (i % 9), 3 FROM range(1000) t(i)")
        con.execute("UPDATE journey_events SET customer_id = 'c3' WHERE event_id = 'e300008'")  # moved to a touched one
        con.execute("UPDATE journey_events SET customer_id = 'c40' WHERE event_id = 'e6'")  # moved away
        con.execute("DELETE FROM journey_events WHERE event_id IN ('e1', 'late-0')")
        plain, two_steps = both()
        assert "e300008" in plain and "e6" not in plain and "e1" not in plain and "new-3" in plain
        assert two_steps == plain
        # the ranges looked up before the transaction, reused: widened to every row written since
        store._found_rows = {}
        con.execute("ROLLBACK")
        before = store._touched_rows("journey_events")
        con.execute("BEGIN TRANSACTION")
        con.execute("INSERT INTO journey_events SELECT 'new-' || i, 'j', 'c' || (i % 9), 3 FROM range(1000) t(i)")
        con.execute("UPDATE journey_events SET customer_id = 'c600' WHERE event_id = 'e5'")  # between touched ones
        con.execute("DELETE FROM journey_events WHERE event_id IN ('e1', 'late-0')")
        assert store._touched_rows("journey_events", again=True) != before
        plain, two_steps = both(again=True)
        assert "new-3" in plain and two_steps == plain
        con.execute(f"DELETE FROM journey_events WHERE {store._touched_rows('journey_events')}")
        assert con.execute("SELECT count(*) FROM journey_events WHERE customer_id IN "
                           "(SELECT customer_id FROM batch_customers)").fetchone()[0] == 0
        con.execute("ROLLBACK")
    finally:
        store.close()


def journeys_landed_in_batches(con: duckdb.DuckDBPyConnection) -> None:
    """614k links in five row groups as in links_in_five_row_groups, journeys of 100 links each,
    landed by batches of 5,000 links: a journey's links and its journeys row carry its batch id,
    which grows along both tables as in a store the pipeline filled."""
    con.execute("""INSERT INTO journey_events
                   SELECT 'e' || i, 'j' || (i // 100), 'c' || (i // 1000), 1 + i // 5000 FROM range(5 * 122880) t(i)""")
    con.execute("""INSERT INTO journeys BY NAME
                   SELECT 'j' || k AS journey_id, 'c' || (k // 10) AS customer_id, 'open' AS status,
                          TIMESTAMPTZ '2026-01-01' AS started_at, TIMESTAMPTZ '2026-01-01' AS last_event_at,
                          now() AS updated_at, 0 AS handoff_count, 0 AS team_handoff_count, 0 AS channel_hops,
                          0 AS touchpoint_count, 1 AS contact_count, 0 AS reopen_count, false AS fcr,
                          [] AS channels, [] AS agents, [] AS teams, [] AS threads, 100 AS event_count,
                          1 + (k * 100) // 5000 AS batch_id
                   FROM range(5 * 1228 + 1) t(k)""")


def test_a_journeys_rows_are_found_by_the_batch_id_of_its_journey_as_by_its_customer(tmp_path):
    """Where a batch was begun, the touched customers' links are found by the batch ids of their
    journeys rows: the same rows as a plain customer filter, before and inside a transaction that
    deleted some and wrote new ones with the batch's own id; by the customer column instead where
    a link has no batch id, or the customers' journeys span more than MAX_JOURNEY_BATCHES batches."""
    store = Store(tmp_path / "links.duckdb")
    try:
        con = store.con
        journeys_landed_in_batches(con)
        con.execute("""CREATE TEMP TABLE batch_customers AS
                       SELECT * FROM (VALUES ('c0'), ('c3'), ('c600'), ('nobody')) t(customer_id)""")
        plain = "customer_id IN (SELECT customer_id FROM batch_customers)"

        def rows(condition: str) -> list[str]:
            return [r[0] for r in con.execute(f"SELECT event_id FROM journey_events WHERE {condition} ORDER BY 1").fetchall()]

        assert "batch_id IN" not in store._touched_rows("journey_events")  # no batch begun: by the customer column
        store._start_lookups()
        store._batch_id = 99
        condition = store._touched_rows("journey_events")
        assert condition.startswith("batch_id IN (1, 99, 121) AND "), condition  # c0 and c3 in batch 1, c600 in 121
        assert "rowid" not in condition and len(rows(plain)) == 3000 and rows(condition) == rows(plain)
        con.execute("BEGIN TRANSACTION")  # as a landing: the touched links rewritten, stamped with the batch's id
        con.execute(f"DELETE FROM journey_events WHERE {condition} AND journey_id <> 'j1'")
        con.execute("INSERT INTO journey_events SELECT 'new-' || i, 'j-new', 'c' || (i % 5), 99 FROM range(1000) t(i)")
        again = store._touched_rows("journey_events", again=True)
        assert again == condition and "new-3" in rows(plain) and rows(again) == rows(plain)
        con.execute("ROLLBACK")
        # a link without a batch id (written before links carried one): found by the customer column
        con.execute("INSERT INTO journey_events VALUES ('old', 'j-gone', 'c3', NULL)")
        store._null_batch_links = None  # (looked up once per store: as a store opened now would)
        store._start_lookups()
        unstamped = store._touched_rows("journey_events")
        assert "batch_id IN" not in unstamped and "old" in rows(unstamped) and rows(unstamped) == rows(plain)
        con.execute("DELETE FROM journey_events WHERE event_id = 'old'")
        # customers whose journeys span more batches than the cap: by the customer column
        store._null_batch_links = None
        store._start_lookups()
        con.execute("DELETE FROM batch_customers")
        con.execute(f"INSERT INTO batch_customers SELECT 'c' || (i * 9) FROM range({MAX_JOURNEY_BATCHES + 1}) t(i)")
        assert len({r[0] for r in con.execute(f"SELECT batch_id FROM journeys WHERE {plain}").fetchall()}) > MAX_JOURNEY_BATCHES
        wide = store._touched_rows("journey_events")
        assert "batch_id IN" not in wide and rows(wide) == rows(plain)
    finally:
        store.close()


def test_a_table_whose_touched_rows_lie_everywhere_is_read_in_one_step_for_a_while(tmp_path):
    """Ranges spanning most of the table cost more to scan than no ranges: the plain customer
    filter is used, without looking again for ONE_STEP_BATCHES batches; then the ranges are
    looked up again and used where they are narrow."""
    store = Store(tmp_path / "wide.duckdb")
    try:
        con = store.con
        links_in_five_row_groups(con)
        con.execute("CREATE TEMP TABLE batch_customers AS SELECT 'spread' AS customer_id")
        store._start_lookups()
        assert "rowid" not in store._touched_rows("journey_events")
        con.execute("DELETE FROM batch_customers")
        con.execute("INSERT INTO batch_customers VALUES ('c5')")  # one row group now
        for _ in range(ONE_STEP_BATCHES - 1):
            store._start_lookups()
            assert "rowid" not in store._touched_rows("journey_events")  # not looked up again
        store._start_lookups()
        condition = store._touched_rows("journey_events")
        assert "rowid BETWEEN 5000 AND 5999" in condition
        assert [r[0] for r in con.execute(f"SELECT count(*) FROM journey_events WHERE {condition}").fetchall()] == [1000]
    finally:
        store.close()


def test_the_store_draws_no_progress_bar_on_stdout(tmp_path):
    """DuckDB draws its progress bar on stdout (a pipe or a file too) during any statement over
    2 s: the writer's connection and the replica's, made from it, have it off."""
    with Store(tmp_path / "j.duckdb") as store:
        for con in (store.con, store.replica.con):
            assert con.execute("SELECT current_setting('enable_progress_bar')").fetchone() == (False,)


def test_the_store_runs_on_one_thread_while_the_other_process_is_busy(tmp_path):
    """The runner tells the store when its worker works on the other core; the setting is the
    whole database's (the replica's connection too), and DuckDB's own number comes back when
    the worker is idle, and at close."""
    def threads(con: duckdb.DuckDBPyConnection) -> int:
        return int(con.execute("SELECT current_setting('threads')").fetchone()[0])

    busy = [True]
    with Store(tmp_path / "j.duckdb") as store:
        usual = threads(store.con)
        store.other_process_busy = lambda: busy[0]
        assert store.fit_threads() == 1
        assert (threads(store.con), threads(store.replica.con)) == (1, 1)
        busy[0] = False
        assert store.fit_threads() == usual == threads(store.con) == threads(store.replica.con)
        busy[0] = True
        store.fit_threads()
        store.con = ThreadsSeenAtClose(store.con, threads)
        closing = store.con
    assert closing.threads_at_close == usual  # the checkpoint that closing makes runs on every core


class ThreadsSeenAtClose:
    """A store's connection that notes DuckDB's threads when it is closed (and so checkpointed);
    everything else goes to the connection itself."""

    def __init__(self, con: duckdb.DuckDBPyConnection, threads) -> None:  # type: ignore[no-untyped-def]
        self._con, self._threads, self.threads_at_close = con, threads, None

    def close(self) -> None:
        self.threads_at_close = self._threads(self._con)
        self._con.close()

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self._con, name)
