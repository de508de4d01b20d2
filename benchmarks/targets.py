"""The performance targets' standing in one `benchmarks/run_all.py` call: each target's figure
beside its aim, and whether the call met it.

Why a table of its own: the parts print long lines of every figure, and the reader of `make
bench` wants first to know which aims this machine met in this call. The aims are those of
docs/architecture.md, "Performance"; a target whose part was not run is left out. Memory is
"flat" when the largest backlog's peak is at most MEMORY_FLAT_MAX_GROWTH times the smallest's,
in the same call; a call with one backlog only has nothing to compare, so its figure is reported,
not judged. The growth aim is judged
twice: on the benchmark's grown store, whose batch finds its customers' history in the first row
groups, and for the same batch with customers whose rows lie all over that store, which reading
by row id ranges cannot narrow (the shape of a store whose customers return over months). The
same batch from customers new to the grown store is reported beside them, not judged: it has no
history to read, so it shows what the store's size alone costs, apart from returning customers.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional

THROUGHPUT_MIN_RATIO = 0.5
FRESHNESS_RATE = 2000.0  # events/s offered for the freshness aim
FRESHNESS_MAX_P99_S = 3.0
REPLICA_MAX_P99_S = 1.0
GROWTH_MAX_RATIO = 1.5
FIVE_EVENTS_MAX_S = 1.0
# "Flat": one backlog's peak moved by 4-5% from call to call on machines of this kind (100k
# events: 978-1,017 MB, 1M events: 1,369-1,445 MB), so a tenth more is past that spread, and
# memory that does not grow with the backlog stays inside it (docs/performance.md, "Memory
# judged against the smallest backlog")
MEMORY_FLAT_MAX_GROWTH = 1.1


@dataclass(frozen=True)
class Standing:
    """One target in one call: ``met`` is None where the target is reported, not judged."""

    target: str
    figure: str
    aim: str
    met: Optional[bool]

    @property
    def verdict(self) -> str:
        return "reported" if self.met is None else ("met" if self.met else "missed")


def standings(results: dict[str, Any]) -> list[Standing]:
    """Every target whose part is in ``results`` (run_all.py's JSON), in the order of the aims."""
    rows: list[Standing] = []
    if "throughput" in results:
        ratio = results["throughput"]["ratio"]
        rows.append(Standing("throughput: run --once against kafka-python alone", f"ratio {ratio:.3f}",
                             f">= {THROUGHPUT_MIN_RATIO}", ratio >= THROUGHPUT_MIN_RATIO))
    for run in results.get("freshness", []):
        p99, replica_p99 = run["latency_s"]["p99"], run["replica_lag_s"]["p99"]
        rate = run["offered_per_s"]
        if rate == FRESHNESS_RATE:
            rows.append(Standing(f"freshness at {rate:,.0f} events/s: landed p99", f"{p99:.2f} s",
                                 f"<= {FRESHNESS_MAX_P99_S:.0f} s", p99 <= FRESHNESS_MAX_P99_S))
            rows.append(Standing(f"freshness at {rate:,.0f} events/s: replica behind p99",
                                 "no batch seen" if replica_p99 is None else f"{replica_p99:.2f} s",
                                 f"<= {REPLICA_MAX_P99_S:.0f} s", replica_p99 is not None and replica_p99 <= REPLICA_MAX_P99_S))
        else:
            rows.append(Standing(f"freshness at {rate:,.0f} events/s: landed p99", f"{p99:.2f} s", "-", None))
    if "growth" in results:
        growth = results["growth"]
        ratio, by_round = growth["ratio_wall"], growth["ratio_wall_by_round"]
        rows.append(Standing("growth: 5,000-event batch, grown store against empty",
                             f"ratio {ratio:.2f} (by round {by_round:.2f})", f"<= {GROWTH_MAX_RATIO}",
                             max(ratio, by_round) <= GROWTH_MAX_RATIO))
        spread = growth.get("returning_customers_batch")  # (absent from results of older calls)
        if spread is not None:
            # (landed once, without a ratio by round, in results of older calls)
            spread_by_round = spread.get("ratio_wall_by_round")
            by_round_text = "" if spread_by_round is None else f"by round {spread_by_round:.2f}; "
            rows.append(Standing("growth: the same batch, its customers' rows all over the grown store",
                                 f"ratio {spread['ratio_wall']:.2f} ({by_round_text}{spread['wall_s']:.2f} s)",
                                 f"<= {GROWTH_MAX_RATIO}",
                                 max(spread["ratio_wall"], spread_by_round or 0.0) <= GROWTH_MAX_RATIO))
        newcomers = growth.get("new_customers_batch")  # (absent from results of older calls)
        if newcomers is not None:
            rows.append(Standing("growth: the same batch from customers new to the grown store",
                                 f"ratio {newcomers['ratio_wall']:.2f} (by round {newcomers['ratio_wall_by_round']:.2f})",
                                 "-", None))
        five = growth["five_event_batch"]["wall_s"]
        rows.append(Standing(f"growth: 5 events for a customer with {growth['whale_stored_events']:,} stored",
                             f"{five:.2f} s", f"< {FIVE_EVENTS_MAX_S:.0f} s", five < FIVE_EVENTS_MAX_S))
    if "memory" in results:
        memory = results["memory"]
        tenths = memory["peak_rss_mb_by_tenth_of_largest_backlog"]
        largest = memory["largest_backlog"]
        by_tenth = (f"{max(tenths):,.0f} MB; first fifth {max(tenths[:2]):,.0f} MB, "
                    f"the rest {min(tenths[2:]):,.0f}-{max(tenths[2:]):,.0f} MB")
        peaks = {int(backlog): float(mb) for backlog, mb in memory.get("peak_rss_mb_by_backlog", {}).items()}
        smallest = min(peaks, default=largest)
        if smallest == largest or largest not in peaks:
            rows.append(Standing(f"memory: peak RSS over {largest:,} events", by_tenth, "flat", None))
        else:
            growth = peaks[largest] / peaks[smallest]
            rows.append(Standing(f"memory: peak RSS over {largest:,} events against {smallest:,}",
                                 f"{growth:.2f}x ({peaks[largest]:,.0f} against {peaks[smallest]:,.0f} MB); by tenth {by_tenth}",
                                 f"<= {MEMORY_FLAT_MAX_GROWTH}x", growth <= MEMORY_FLAT_MAX_GROWTH))
    return rows


def render(rows: list[Standing]) -> str:
    """The standings as aligned text lines, one per target."""
    width = max((len(r.target) for r in rows), default=0)
    figure_width = max((len(r.figure) for r in rows), default=0)
    return "\n".join(f"  {r.target:<{width}}  {r.figure:<{figure_width}}  aim {r.aim:<8}  {r.verdict}" for r in rows)


def as_json(rows: list[Standing]) -> list[dict[str, Any]]:
    return [{**asdict(r), "verdict": r.verdict} for r in rows]
