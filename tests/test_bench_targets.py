"""benchmarks/targets.py: the standing `make bench` prints last judges each figure against its
aim (docs/architecture.md, "Performance"), at the aim's edge too, and judges nothing it has no
figure or no number for."""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import targets  # noqa: E402


def _results(throughput: float = 0.5, p99: float = 3.0, replica_p99: float | None = 1.0, growth: float = 1.5,
             growth_by_round: float = 1.5, five_s: float = 0.99, spread: float = 1.5, spread_by_round: float = 1.5,
             newcomers: float = 1.1, memory_peak_mb: float = 1100.0) -> dict:
    return {
        "throughput": {"ratio": throughput},
        "freshness": [
            {"offered_per_s": 2000, "latency_s": {"p99": p99}, "replica_lag_s": {"p99": replica_p99}},
            {"offered_per_s": 5000, "latency_s": {"p99": 9.0}, "replica_lag_s": {"p99": 5.0}},
        ],
        "growth": {"ratio_wall": growth, "ratio_wall_by_round": growth_by_round, "whale_stored_events": 200_000,
                   "five_event_batch": {"wall_s": five_s},
                   "returning_customers_batch": {"wall_s": 1.2, "ratio_wall": spread, "ratio_wall_by_round": spread_by_round},
                   "new_customers_batch": {"wall_s": 0.7, "ratio_wall": newcomers, "ratio_wall_by_round": newcomers}},
        "memory": {"largest_backlog": 1_000_000,
                   "peak_rss_mb_by_backlog": {"100000": 1000.0, "200000": 1040.0, "1000000": memory_peak_mb},
                   "peak_rss_mb_by_tenth_of_largest_backlog": [900, 1000, 1050, 1020, memory_peak_mb, 1080, 1090, 1060, 1070, 1065]},
    }


def _verdicts(results: dict) -> dict[str, str]:
    return {row.target: row.verdict for row in targets.standings(results)}


def test_figures_at_the_aims_edge_meet_it_and_the_reported_ones_are_not_judged():
    verdicts = _verdicts(_results())
    assert verdicts == {
        "throughput: run --once against kafka-python alone": "met",
        "freshness at 2,000 events/s: landed p99": "met",
        "freshness at 2,000 events/s: replica behind p99": "met",
        "freshness at 5,000 events/s: landed p99": "reported",
        "growth: 5,000-event batch, grown store against empty": "met",
        "growth: the same batch, its customers' rows all over the grown store": "met",
        "growth: the same batch from customers new to the grown store": "reported",
        "growth: 5 events for a customer with 200,000 stored": "met",
        "memory: peak RSS over 1,000,000 events against 100,000": "met",
    }


def test_each_figure_past_its_aim_misses_it_alone():
    misses = {
        "throughput: run --once against kafka-python alone": _results(throughput=0.499),
        "freshness at 2,000 events/s: landed p99": _results(p99=3.01),
        "freshness at 2,000 events/s: replica behind p99": _results(replica_p99=1.01),
        "growth: 5 events for a customer with 200,000 stored": _results(five_s=1.0),
        "growth: the same batch, its customers' rows all over the grown store": _results(spread=1.51),
        "memory: peak RSS over 1,000,000 events against 100,000": _results(memory_peak_mb=1101.0),
    }
    misses_by_round = {
        "growth: the same batch, its customers' rows all over the grown store": _results(spread_by_round=1.51),
    }
    for target, results in [*misses.items(), *misses_by_round.items()]:
        missed = [name for name, verdict in _verdicts(results).items() if verdict == "missed"]
        assert missed == [target]


def test_the_growth_ratio_must_meet_its_aim_both_ways_and_a_replica_never_seen_misses():
    for ratio, by_round in ((1.51, 1.4), (1.4, 1.51)):
        assert _verdicts(_results(growth=ratio, growth_by_round=by_round))[
            "growth: 5,000-event batch, grown store against empty"] == "missed"
    assert _verdicts(_results(replica_p99=None))["freshness at 2,000 events/s: replica behind p99"] == "missed"


def test_parts_not_run_are_left_out_and_memory_is_judged_against_the_smallest_backlog():
    results = _results(memory_peak_mb=1410.0)
    only_memory = {"memory": results["memory"]}
    rows = targets.standings(only_memory)
    assert [row.target for row in rows] == ["memory: peak RSS over 1,000,000 events against 100,000"]
    assert rows[0].figure == ("1.41x (1,410 against 1,000 MB); by tenth 1,410 MB; first fifth 1,000 MB, "
                              "the rest 1,020-1,410 MB")
    text = targets.render(targets.standings(results))
    assert len(text.splitlines()) == 9 and text.count("missed") == 1
    assert [entry["verdict"] for entry in targets.as_json(rows)] == ["missed"]


def test_memory_of_one_backlog_has_nothing_to_compare_and_is_reported():
    """`--only memory --backlogs 3000000` runs one backlog: its tenths are shown, not judged."""
    memory = _results(memory_peak_mb=1600.0)["memory"]
    memory.update(largest_backlog=3_000_000, peak_rss_mb_by_backlog={"3000000": 1600.0})
    rows = targets.standings({"memory": memory})
    assert [(row.target, row.aim, row.verdict) for row in rows] == [
        ("memory: peak RSS over 3,000,000 events", "flat", "reported")]
    assert rows[0].figure == "1,600 MB; first fifth 1,000 MB, the rest 1,020-1,600 MB"
    del memory["peak_rss_mb_by_backlog"]  # results of calls before the judge
    assert [row.verdict for row in targets.standings({"memory": memory})] == ["reported"]


def test_results_without_the_spread_customers_batch_still_judge_the_growth_batch():
    """A results file from before the spread case was judged has no such entry: that row is left
    out, and the rest is judged as before."""
    results = _results(growth=1.6)
    del results["growth"]["returning_customers_batch"]
    verdicts = _verdicts(results)
    assert "growth: the same batch, its customers' rows all over the grown store" not in verdicts
    assert verdicts["growth: 5,000-event batch, grown store against empty"] == "missed"


def test_the_new_customers_batch_is_reported_beside_the_growth_aim_never_judged():
    """It shows what the grown store's size alone costs: a figure far past the aim misses
    nothing, and results from before it was measured leave the row out."""
    results = _results(newcomers=9.0)
    rows = {row.target: row for row in targets.standings(results)}
    newcomers = rows["growth: the same batch from customers new to the grown store"]
    assert (newcomers.figure, newcomers.verdict) == ("ratio 9.00 (by round 9.00)", "reported")
    assert [name for name, row in rows.items() if row.verdict == "missed"] == []
    del results["growth"]["new_customers_batch"]
    assert "growth: the same batch from customers new to the grown store" not in _verdicts(results)


def test_the_spread_customers_batch_shows_its_ratio_by_round_and_older_results_their_single_landing():
    """Since it lands in the same rounds as the other stores, its figure names the ratio by round;
    results of calls that landed it once have no such ratio and are judged by the one they have."""
    results = _results(spread=3.2, spread_by_round=3.1)
    rows = {row.target: row for row in targets.standings(results)}
    spread = rows["growth: the same batch, its customers' rows all over the grown store"]
    assert (spread.figure, spread.verdict) == ("ratio 3.20 (by round 3.10; 1.20 s)", "missed")
    del results["growth"]["returning_customers_batch"]["ratio_wall_by_round"]
    older = {row.target: row for row in targets.standings(results)}["growth: the same batch, its customers' rows all over the grown store"]
    assert (older.figure, older.verdict) == ("ratio 3.20 (1.20 s)", "missed")
    results["growth"]["returning_customers_batch"]["ratio_wall"] = 1.5
    assert _verdicts(results)["growth: the same batch, its customers' rows all over the grown store"] == "met"

