"""The human-readable summary of a journeys database (what `cxj demo` prints)."""
from __future__ import annotations

from pathlib import Path

import duckdb


def _table(headers: list[str], rows: list[tuple]) -> str:
    cells = [[str(h) for h in headers]] + [["" if v is None else str(v) for v in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join("  " + line for line in lines)


def _histogram(con: duckdb.DuckDBPyConnection, column: str, cap: int) -> str:
    rows = con.execute(
        f"""SELECT CASE WHEN {column} >= {cap} THEN '{cap}+' ELSE {column}::VARCHAR END AS bucket,
                   count(*) AS journeys, least({column}, {cap}) AS k
            FROM journeys GROUP BY ALL ORDER BY k"""
    ).fetchall()
    total = sum(r[1] for r in rows) or 1
    width = 40
    return "\n".join(
        f"  {bucket:>4} | {'#' * max(1, round(width * n / total)) if n else '':<{width}} {n}" for bucket, n, _ in rows
    )


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    hours = seconds / 3600
    return f"{hours:.1f} h" if hours >= 1 else f"{seconds / 60:.1f} min"


def summarize(con: duckdb.DuckDBPyConnection, db_path: Path) -> str:
    out: list[str] = []
    events, dead, batches = con.execute(
        "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM dead_letters), (SELECT count(*) FROM pipeline_batches)"
    ).fetchone()
    dups = con.execute("SELECT coalesce(sum(duplicates), 0) FROM pipeline_batches").fetchone()[0]
    out.append(f"Landed {events} events in {batches} batches ({dups} duplicates dropped, {dead} dead letters).")
    status = con.execute(
        """SELECT status, count(*), round(100.0 * count(*) / sum(count(*)) OVER (), 1) FROM journeys
           GROUP BY status ORDER BY count(*) DESC"""
    ).fetchall()
    total = sum(r[1] for r in status)
    out.append(f"\nJourneys by status ({total} journeys)")
    out.append(_table(["status", "journeys", "%"], status))
    p50, p90, mean_ttr, fcr, frt = con.execute(
        """SELECT median(time_to_resolution_s), quantile_cont(time_to_resolution_s, 0.9),
                  avg(time_to_resolution_s),
                  100.0 * avg(CASE WHEN fcr THEN 1 ELSE 0 END) FILTER (WHERE status = 'resolved'),
                  median(first_response_s)
           FROM journeys"""
    ).fetchone()
    out.append("\nTime to resolution (resolved journeys)")
    out.append(f"  median {_duration(p50)}   p90 {_duration(p90)}   mean {_duration(mean_ttr)}")
    out.append(f"  median first response {_duration(frt)}")
    out.append(f"  first-contact resolution: {fcr or 0:.1f}% of resolved journeys")
    out.append("\nHandoffs per journey")
    out.append(_histogram(con, "handoff_count", 5))
    out.append("\nChannel hops per journey")
    out.append(_histogram(con, "channel_hops", 4))
    reasons = con.execute("SELECT reason, count(*) FROM dead_letters GROUP BY reason ORDER BY count(*) DESC").fetchall()
    out.append("\nDead letters by reason")
    out.append(_table(["reason", "messages"], reasons) if reasons else "  none")
    out.append(f"\nDuckDB file: {db_path}")
    out.append("Try:")
    out.append(
        "  .venv/bin/cxj sql \"SELECT channels, count(*) AS journeys, median(time_to_resolution_s)/3600 AS median_ttr_h "
        "FROM journeys WHERE status = 'resolved' GROUP BY channels ORDER BY journeys DESC LIMIT 10\""
    )
    out.append(f"  or: python -c \"import duckdb; print(duckdb.connect('{db_path}', read_only=True).sql('FROM journeys LIMIT 5'))\"")
    return "\n".join(out)
