"""`cxj report`: one self-contained HTML page of charts for analysts and ops.

Why this shape: analysts and ops look at charts, often on a laptop without network or in a
ticket attachment, so the page must open offline from a single file. The charts are Vega-Lite
specs built with Altair; the Vega/Vega-Lite/vega-embed JavaScript is bundled by
``vl-convert-python`` (no CDN) and inlined once, and every chart renders to SVG in the browser.

Every figure comes from the model views (core_* / mart_* / v_freshness, sql/models) through
``pipelines.storage.reader`` (read-only, the same names while the pipeline runs), filtered by journey start
day, entry channel and team. The pipeline-health section (batches, lag, dead letters) is about
the pipeline, not journeys, so only the date range applies to it (by landing day).
"""
from __future__ import annotations

import html
import json
import os
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Optional

CHART_WIDTH = 400
CHART_HEIGHT = 200
TTR_BUCKETS = [(1, "<1h"), (2, "1-2h"), (4, "2-4h"), (8, "4-8h"), (24, "8-24h"), (48, "1-2d"), (96, "2-4d"),
               (168, "4-7d"), (None, "7d+")]
FIRST_RESPONSE_BUCKETS = [(1, "<1m"), (5, "1-5m"), (15, "5-15m"), (30, "15-30m"), (60, "30-60m"), (120, "1-2h"),
                          (240, "2-4h"), (480, "4-8h"), (None, "8h+")]
STATUS_COLORS = {"resolved": "#2e7d32", "open": "#f9a825", "unresolved": "#c62828"}


class ReportError(RuntimeError):
    """The report cannot be built (one line)."""


@dataclass
class Filters:
    """Which journeys the report covers. Dates are UTC start days, inclusive."""

    since: Optional[date] = None
    until: Optional[date] = None
    last_days: Optional[int] = None   # relative to the data's latest start day, not the wall clock
    channels: list[str] = field(default_factory=list)
    teams: list[str] = field(default_factory=list)

    def resolve(self, con: Any) -> "Filters":
        """Turns ``last_days`` into a date range ending at the data's own latest start day."""
        if self.last_days is None:
            return self
        latest = con.execute("SELECT max(started_date) FROM core_journeys").fetchone()[0]
        if latest is None:
            return Filters(self.since, self.until, None, self.channels, self.teams)
        since = latest - timedelta(days=self.last_days - 1)
        return Filters(max(since, self.since) if self.since else since, self.until or latest, None,
                       self.channels, self.teams)

    def where(self, alias: str = "j") -> tuple[str, list[Any]]:
        """A WHERE clause over core_journeys (as ``alias``) and its parameters."""
        clauses, params = ["true"], []
        if self.since:
            clauses.append(f"{alias}.started_date >= ?")
            params.append(self.since)
        if self.until:
            clauses.append(f"{alias}.started_date <= ?")
            params.append(self.until)
        if self.channels:
            clauses.append(f"{alias}.entry_channel IN ({', '.join('?' * len(self.channels))})")
            params.extend(self.channels)
        if self.teams:
            clauses.append(f"{alias}.team IN ({', '.join('?' * len(self.teams))})")
            params.extend(self.teams)
        return " AND ".join(clauses), params

    def describe(self) -> str:
        parts = []
        if self.since or self.until:
            parts.append(f"started {self.since or 'from the beginning'} to {self.until or 'the latest day'}")
        if self.channels:
            parts.append("entry channel " + ", ".join(self.channels))
        if self.teams:
            parts.append("team " + ", ".join(self.teams))
        return "; ".join(parts) if parts else "all journeys"


# ---------------------------------------------------------------- data


def _rows(con: Any, query: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
    from pipelines.cli.sql_output import json_value

    cursor = con.execute(query, params or [])
    names = [d[0] for d in cursor.description]
    return [{n: json_value(v) for n, v in zip(names, row)} for row in cursor.fetchall()]


def _bucket_sql(column: str, buckets: list[tuple[Optional[float], str]]) -> tuple[str, str]:
    """(label CASE, order CASE) for upper-bounded buckets of ``column``."""
    label = " ".join(f"WHEN {column} < {bound} THEN '{name}'" for bound, name in buckets if bound is not None)
    order = " ".join(f"WHEN {column} < {bound} THEN {i}" for i, (bound, _) in enumerate(buckets) if bound is not None)
    return f"CASE {label} ELSE '{buckets[-1][1]}' END", f"CASE {order} ELSE {len(buckets) - 1} END"


def collect(con: Any, filters: Filters) -> dict[str, Any]:
    """Every figure of the report, as plain JSON-able rows."""
    where, params = filters.where()
    journeys = f"(SELECT * FROM core_journeys j WHERE {where})"
    data: dict[str, Any] = {}
    data["kpis"] = _rows(con, f"""
        SELECT count(*) AS journeys,
               count(*) FILTER (WHERE status = 'resolved') AS resolved,
               count(*) FILTER (WHERE status = 'open') AS open,
               count(*) FILTER (WHERE status = 'unresolved') AS unresolved,
               round(quantile_cont(time_to_resolution_h, 0.5), 2) AS median_ttr_h,
               round(quantile_cont(time_to_resolution_h, 0.9), 2) AS p90_ttr_h,
               round(count(*) FILTER (WHERE fcr) / nullif(count(*) FILTER (WHERE status = 'resolved'), 0), 4) AS fcr_rate,
               round(quantile_cont(first_response_s, 0.5) / 60, 2) AS median_first_response_min,
               round(avg(csat), 2) AS avg_csat,
               round(count(*) FILTER (WHERE csat >= 4) / nullif(count(csat), 0), 4) AS csat_satisfied_rate,
               min(started_date) AS first_day, max(started_date) AS last_day
        FROM {journeys}""", params)[0]
    data["by_channel"] = _rows(con, f"""
        SELECT started_date AS day, entry_channel AS channel, count(*) AS journeys
        FROM {journeys} GROUP BY ALL ORDER BY day, channel""", params)
    data["by_status"] = _rows(con, f"""
        SELECT started_date AS day, status, count(*) AS journeys
        FROM {journeys} GROUP BY ALL ORDER BY day, status""", params)
    label, order = _bucket_sql("time_to_resolution_h", TTR_BUCKETS)
    data["ttr"] = _rows(con, f"""
        SELECT {label} AS bucket, {order} AS bucket_order, count(*) AS journeys
        FROM {journeys} WHERE status = 'resolved' GROUP BY ALL ORDER BY bucket_order""", params)
    label, order = _bucket_sql("first_response_s / 60", FIRST_RESPONSE_BUCKETS)
    data["first_response"] = _rows(con, f"""
        SELECT {label} AS bucket, {order} AS bucket_order, count(*) AS journeys
        FROM {journeys} WHERE first_response_s IS NOT NULL GROUP BY ALL ORDER BY bucket_order""", params)
    data["friction"] = _rows(con, f"""
        SELECT 'handoffs' AS measure, handoff_bucket AS count_bucket, count(*) AS journeys FROM {journeys} GROUP BY ALL
        UNION ALL
        SELECT 'channel hops', hop_bucket, count(*) FROM {journeys} GROUP BY ALL
        ORDER BY measure, count_bucket""", params + params)
    data["paths"] = _rows(con, f"""
        SELECT p.path, count(*) AS journeys,
               round(count(*) FILTER (WHERE j.status = 'resolved') / count(*), 4) AS resolved_share,
               round(avg(j.csat), 2) AS avg_csat
        FROM core_journey_paths p JOIN {journeys} j ON j.journey_id = p.journey_id
        GROUP BY p.path ORDER BY journeys DESC, p.path LIMIT 10""", params)
    data["pingpong"] = _rows(con, f"""
        SELECT s.level, s.handler || ' -> ' || s.previous_handler || ' -> ' || s.handler AS pattern, count(*) AS bounces
        FROM core_handler_steps s JOIN {journeys} j ON j.journey_id = s.journey_id
        WHERE s.is_bounce GROUP BY ALL ORDER BY bounces DESC, pattern LIMIT 12""", params)
    data["backlog"] = _rows(con, f"""
        SELECT o.age_bucket, o.bucket_order, o.entry_channel AS channel, count(*) AS open_journeys, any_value(o.as_of) AS as_of
        FROM core_open_journeys o JOIN {journeys} j ON j.journey_id = o.journey_id
        GROUP BY ALL ORDER BY o.bucket_order, channel""", params)
    data["csat_friction"] = _rows(con, f"""
        SELECT handoff_bucket, hop_bucket, count(*) AS journeys, count(csat) AS csat_responses,
               round(avg(csat), 2) AS avg_csat
        FROM {journeys} GROUP BY ALL ORDER BY handoff_bucket, hop_bucket""", params)
    data["freshness"] = _rows(con, "SELECT * FROM v_freshness")[0]
    landed_where, landed_params = _landed_range(filters)
    data["batches"] = _rows(con, f"""
        SELECT b.batch_id, b.finished_at, b.consumed, b.landed, b.duplicates, b.dead_letters,
               round(b.duration_s, 3) AS duration_s,
               round(l.p50_latency_s, 3) AS p50_latency_s, round(l.p95_latency_s, 3) AS p95_latency_s
        FROM pipeline_batches b
        LEFT JOIN (SELECT batch_id,
                          quantile_cont(epoch(landed_at) - epoch(kafka_timestamp), 0.5) AS p50_latency_s,
                          quantile_cont(epoch(landed_at) - epoch(kafka_timestamp), 0.95) AS p95_latency_s
                   FROM events WHERE kafka_timestamp IS NOT NULL GROUP BY batch_id) l ON l.batch_id = b.batch_id
        WHERE {landed_where.replace('landed_at', 'b.finished_at')}
        ORDER BY b.batch_id""", landed_params)
    data["dead_letters"] = _rows(con, f"""
        SELECT reason, count(*) AS messages FROM dead_letters WHERE {landed_where}
        GROUP BY reason ORDER BY messages DESC, reason""", landed_params)
    data["filter_values"] = {
        "channels": [r["entry_channel"] for r in _rows(con, "SELECT DISTINCT entry_channel FROM core_journeys ORDER BY 1")],
        "teams": [r["team"] for r in _rows(con, "SELECT DISTINCT team FROM core_journeys ORDER BY 1")],
    }
    return data


def _landed_range(filters: Filters) -> tuple[str, list[Any]]:
    clauses, params = ["true"], []
    if filters.since:
        clauses.append("CAST(timezone('UTC', landed_at) AS DATE) >= ?")
        params.append(filters.since)
    if filters.until:
        clauses.append("CAST(timezone('UTC', landed_at) AS DATE) <= ?")
        params.append(filters.until)
    return " AND ".join(clauses), params


# ---------------------------------------------------------------- charts


def _charts(data: dict[str, Any]) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(section, title, note, Vega-Lite spec) for every chart, in page order."""
    import altair as alt

    def base(rows: list[dict[str, Any]]) -> alt.Chart:
        return alt.Chart(alt.Data(values=rows)).properties(width=CHART_WIDTH, height=CHART_HEIGHT)

    status_scale = alt.Scale(domain=list(STATUS_COLORS), range=list(STATUS_COLORS.values()))
    ttr_order = [name for _, name in TTR_BUCKETS]
    fr_order = [name for _, name in FIRST_RESPONSE_BUCKETS]
    age_order = ["0-1h", "1-4h", "4-24h", "1-3d", "3-7d", "7d+"]
    charts: list[tuple[str, str, str, Any]] = []

    charts.append(("Volume", "Journeys started per day, by entry channel", "UTC start day of each journey.",
                   base(data["by_channel"]).mark_bar().encode(
                       x=alt.X("day:T", title="start day"), y=alt.Y("journeys:Q", title="journeys"),
                       color=alt.Color("channel:N", title="entry channel"),
                       tooltip=["day:T", "channel:N", "journeys:Q"])))
    charts.append(("Volume", "Journeys started per day, by status now", "Status as of the latest landed batch.",
                   base(data["by_status"]).mark_bar().encode(
                       x=alt.X("day:T", title="start day"), y=alt.Y("journeys:Q", title="journeys"),
                       color=alt.Color("status:N", scale=status_scale),
                       tooltip=["day:T", "status:N", "journeys:Q"])))
    charts.append(("Speed", "Time to resolution", "Resolved journeys; reopen cycles included.",
                   base(data["ttr"]).mark_bar(color="#1565c0").encode(
                       x=alt.X("bucket:N", sort=ttr_order, title="time to resolution"),
                       y=alt.Y("journeys:Q"), tooltip=["bucket:N", "journeys:Q"])))
    charts.append(("Speed", "First response", "First agent-authored message after the journey started.",
                   base(data["first_response"]).mark_bar(color="#6a1b9a").encode(
                       x=alt.X("bucket:N", sort=fr_order, title="first response"),
                       y=alt.Y("journeys:Q"), tooltip=["bucket:N", "journeys:Q"])))
    charts.append(("Friction", "Handoffs and channel hops per journey",
                   "How often work changed hands, and how often the customer switched channel.",
                   base(data["friction"]).mark_bar().encode(
                       x=alt.X("count_bucket:N", title="per journey", sort=["0", "1", "2", "3+"]),
                       xOffset=alt.XOffset("measure:N"), y=alt.Y("journeys:Q"),
                       color=alt.Color("measure:N", title=None), tooltip=["measure:N", "count_bucket:N", "journeys:Q"])))
    charts.append(("Friction", "Most common channel paths", "Touchpoint channels in order, repeats collapsed (top 10).",
                   base(data["paths"]).mark_bar(color="#00838f").encode(
                       y=alt.Y("path:N", sort="-x", title=None), x=alt.X("journeys:Q"),
                       tooltip=["path:N", "journeys:Q", alt.Tooltip("resolved_share:Q", format=".1%"), "avg_csat:Q"])))
    charts.append(("Friction", "Handoff ping-pong", "Work that came back within a thread: A -> B -> A (top 12).",
                   base(data["pingpong"]).mark_bar().encode(
                       y=alt.Y("pattern:N", sort="-x", title=None), x=alt.X("bounces:Q"),
                       color=alt.Color("level:N", scale=alt.Scale(domain=["agent", "team"], range=["#ef6c00", "#5d4037"])),
                       tooltip=["level:N", "pattern:N", "bounces:Q"])))
    as_of = data["backlog"][0]["as_of"] if data["backlog"] else None
    charts.append(("Backlog", "Open journeys by age", f"Age at the data's latest event ({as_of or 'no open journeys'}), by entry channel.",
                   base(data["backlog"]).mark_bar().encode(
                       x=alt.X("age_bucket:N", sort=age_order, title="age", scale=alt.Scale(domain=age_order)),
                       y=alt.Y("open_journeys:Q", title="open journeys"), color=alt.Color("channel:N", title="entry channel"),
                       tooltip=["age_bucket:N", "channel:N", "open_journeys:Q"])))
    heat = base(data["csat_friction"]).encode(
        x=alt.X("hop_bucket:N", title="channel hops", sort=["0", "1", "2", "3+"]),
        y=alt.Y("handoff_bucket:N", title="handoffs", sort=["0", "1", "2", "3+"]))
    charts.append(("Satisfaction", "CSAT against friction", "Mean CSAT (1-5) per handoffs x channel hops; the label shows answers.",
                   (heat.mark_rect().encode(
                       color=alt.Color("avg_csat:Q", title="avg CSAT", scale=alt.Scale(domain=[1, 5], scheme="redyellowgreen")),
                       tooltip=["handoff_bucket:N", "hop_bucket:N", "journeys:Q", "csat_responses:Q", "avg_csat:Q"])
                    + heat.mark_text(fontSize=11).encode(text=alt.Text("csat_responses:Q")))))
    charts.append(("Pipeline health", "Pipeline lag per batch",
                   "Seconds from the Kafka record timestamp to landing (p50 and p95 of each batch).",
                   base(data["batches"]).transform_fold(["p50_latency_s", "p95_latency_s"], as_=["percentile", "seconds"])
                   .mark_line(point=True).encode(
                       x=alt.X("batch_id:Q", title="batch"), y=alt.Y("seconds:Q", title="seconds"),
                       color=alt.Color("percentile:N", title=None), tooltip=["batch_id:Q", "percentile:N", "seconds:Q"])))
    charts.append(("Pipeline health", "Records per batch", "consumed = landed + duplicates + dead letters.",
                   base(data["batches"]).transform_fold(["landed", "duplicates", "dead_letters"], as_=["kind", "records"])
                   .mark_bar().encode(
                       x=alt.X("batch_id:O", title="batch"), y=alt.Y("records:Q"), color=alt.Color("kind:N", title=None),
                       tooltip=["batch_id:O", "kind:N", "records:Q"])))
    charts.append(("Pipeline health", "Dead letters by reason", "Messages that could not be landed, kept with the reason.",
                   base(data["dead_letters"]).mark_bar(color="#b71c1c").encode(
                       y=alt.Y("reason:N", sort="-x", title=None), x=alt.X("messages:Q"),
                       tooltip=["reason:N", "messages:Q"])))
    return [(section, title, note, _empty_safe(chart.to_dict())) for section, title, note, chart in charts]


def _empty_safe(spec: dict[str, Any]) -> dict[str, Any]:
    """A chart without rows says so instead of drawing empty scales (Vega computes infinite
    extents for them and logs errors in the console)."""
    data = spec.get("data", {})
    if not isinstance(data, dict) or data.get("values") != []:
        return spec
    return {
        "$schema": spec.get("$schema"), "config": spec.get("config", {}), "width": CHART_WIDTH, "height": CHART_HEIGHT,
        "data": {"values": [{"text": "no data for this selection"}]},
        "mark": {"type": "text", "fontSize": 14, "color": "#5b6375"},
        "encoding": {"text": {"field": "text", "type": "nominal"}},
    }


# ---------------------------------------------------------------- page


def vega_bundle() -> str:
    """The Vega + Vega-Lite + vega-embed JavaScript, bundled offline by vl-convert and cached
    (bundling takes seconds; the cache key is the vl-convert and Vega-Lite versions)."""
    import vl_convert as vlc
    from altair.utils._importers import vl_version_for_vl_convert

    version = vl_version_for_vl_convert()  # the Vega-Lite version Altair's specs are written for
    cache_dir = Path(os.environ.get("CXJ_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cxj")
    cache = cache_dir / f"vega-embed-{vlc.__version__}-{version}.js"
    try:
        return cache.read_text(encoding="utf-8")
    except OSError:
        pass
    bundle = vlc.javascript_bundle(vl_version=version)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        temp = cache.with_suffix(f".{os.getpid()}.tmp")
        temp.write_text(bundle, encoding="utf-8")
        temp.replace(cache)
    except OSError:
        pass  # no writable cache: bundle again next time
    return bundle


def _script_json(value: Any) -> str:
    """JSON safe inside <script>: no '<', '>' or '&' can end the tag, whatever the data holds."""
    return json.dumps(value, ensure_ascii=False).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _fmt(value: Any, kind: str = "") -> str:
    if value is None:
        return "n/a"
    if kind == "pct":
        return f"{100 * value:.1f} %"
    if kind == "h":
        return f"{value:.1f} h"
    if kind == "min":
        return f"{value:.1f} min"
    if kind == "s":
        if abs(value) >= 2 * 86400:
            return f"{value / 86400:.1f} days"
        return f"{value / 3600:.1f} h" if abs(value) >= 3600 else f"{value:.1f} s"
    if kind == "ts":
        return str(value).replace("T", " ")[:16] + " UTC"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def render(data: dict[str, Any], filters: Filters, db_label: str, generated: datetime) -> str:
    charts = _charts(data)
    k, f = data["kpis"], data["freshness"]
    tiles = [
        ("journeys", _fmt(k["journeys"])), ("resolved", _fmt(k["resolved"])), ("open", _fmt(k["open"])),
        ("median time to resolution", _fmt(k["median_ttr_h"], "h")), ("p90 time to resolution", _fmt(k["p90_ttr_h"], "h")),
        ("first-contact resolution", _fmt(k["fcr_rate"], "pct")),
        ("median first response", _fmt(k["median_first_response_min"], "min")),
        ("avg CSAT (1-5)", _fmt(k["avg_csat"])), ("CSAT % (4-5)", _fmt(k["csat_satisfied_rate"], "pct")),
    ]
    health = [
        ("newest event", _fmt(f.get("newest_occurred_at"), "ts")), ("event freshness", _fmt(f.get("event_freshness_s"), "s")),
        ("last batch", f"#{f.get('last_batch_id')} at {_fmt(f.get('last_batch_at'), 'ts')}" if f.get("last_batch_id") else "none yet"),
        ("processing freshness", _fmt(f.get("processing_freshness_s"), "s")),
        ("dead letters (range)", _fmt(sum(r["messages"] for r in data["dead_letters"]))),
        ("batches (range)", _fmt(len(data["batches"]))),
    ]

    def tile_html(items: list[tuple[str, str]]) -> str:
        return "".join(f'<div class="tile"><div class="v">{html.escape(v)}</div><div class="k">{html.escape(k)}</div></div>'
                       for k, v in items)

    sections: dict[str, list[str]] = {}
    specs = []
    for index, (section, title, note, spec) in enumerate(charts):
        chart_id = f"chart-{index}"
        specs.append({"id": chart_id, "spec": spec})
        sections.setdefault(section, []).append(
            f'<figure><figcaption><b>{html.escape(title)}</b><span>{html.escape(note)}</span></figcaption>'
            f'<div class="chart" id="{chart_id}" data-title="{html.escape(title)}"></div></figure>')
    body = "".join(
        f"<section><h2>{html.escape(name)}</h2>"
        + (f'<div class="tiles">{tile_html(health)}</div>' if name == "Pipeline health" else "")
        + f'<div class="grid">{"".join(figures)}</div></section>'
        for name, figures in sections.items()
    )
    options = data["filter_values"]
    period = f"{k['first_day'] or '–'} to {k['last_day'] or '–'}"
    return PAGE.format(
        title=html.escape(f"CX Journeys report — {filters.describe()}"),
        heading=html.escape("CX Journeys report"),
        subtitle=html.escape(f"{filters.describe()} · journeys started {period} · {db_label} · generated "
                             f"{generated.strftime('%Y-%m-%d %H:%M UTC')}"),
        filters_note=html.escape(
            "Filters: cxj report --from/--to DATE, --days N (relative to the data's latest day), "
            f"--channel ({', '.join(options['channels']) or 'none'}), --team ({', '.join(options['teams']) or 'none'})."),
        tiles=tile_html(tiles),
        body=body,
        bundle=vega_bundle().replace("</script", "<\\/script"),
        specs=_script_json(specs),
    )


PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
  body {{ font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; background: #f5f6f8; color: #1d2330; }}
  header {{ background: #1d2330; color: #fff; padding: 18px 28px; }}
  header h1 {{ margin: 0 0 4px; font-size: 22px; }}
  header p {{ margin: 0; color: #c9cfdb; font-size: 13px; }}
  main {{ padding: 12px 28px 40px; }}
  h2 {{ font-size: 17px; margin: 26px 0 10px; border-bottom: 1px solid #d8dce4; padding-bottom: 4px; }}
  .tiles {{ display: flex; flex-wrap: wrap; gap: 10px; margin: 14px 0; }}
  .tile {{ background: #fff; border: 1px solid #e0e3ea; border-radius: 6px; padding: 10px 14px; min-width: 140px; }}
  .tile .v {{ font-size: 20px; font-weight: 600; }}
  .tile .k {{ font-size: 12px; color: #5b6375; }}
  .grid {{ display: flex; flex-wrap: wrap; gap: 14px; }}
  figure {{ margin: 0; background: #fff; border: 1px solid #e0e3ea; border-radius: 6px; padding: 10px 12px; }}
  figcaption b {{ display: block; font-size: 14px; }}
  figcaption span {{ display: block; font-size: 12px; color: #5b6375; margin-bottom: 6px; }}
  .chart {{ min-width: 420px; min-height: 220px; }}
  .chart.failed {{ color: #b71c1c; }}
  footer {{ font-size: 12px; color: #5b6375; padding: 0 28px 24px; }}
</style>
<script>
{bundle}
</script>
</head>
<body>
<header><h1>{heading}</h1><p>{subtitle}</p></header>
<main>
<div class="tiles">{tiles}</div>
{body}
</main>
<footer>{filters_note} Everything on this page is in this one file (no network needed).</footer>
<script type="application/json" id="cxj-specs">{specs}</script>
<script>
(function () {{
  var charts = JSON.parse(document.getElementById("cxj-specs").textContent);
  var pending = charts.length;
  function done() {{ pending -= 1; if (pending === 0) {{ document.body.setAttribute("data-charts-done", "1"); }} }}
  charts.forEach(function (c) {{
    var el = document.getElementById(c.id);
    vegaEmbed(el, c.spec, {{ renderer: "svg", actions: false }})
      .then(function () {{ el.setAttribute("data-rendered", "1"); done(); }})
      .catch(function (err) {{ el.classList.add("failed"); el.textContent = "chart failed: " + err; console.error(err); done(); }});
  }});
}})();
</script>
</body>
</html>
"""


def build(con: Any, filters: Filters, db_label: str) -> str:
    """The whole page for ``filters`` over the connection's tables and views."""
    resolved = filters.resolve(con)
    return render(collect(con, resolved), resolved, db_label, datetime.now(timezone.utc))


def write(page: str, target: Path) -> None:
    """Writes next to ``target`` and renames, so a reader never sees half a page."""
    temp = target.with_name(f".{target.name}.{os.getpid()}.part")
    try:
        temp.write_text(page, encoding="utf-8")
        temp.replace(target)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise ReportError(f"cannot write {target}: {exc.strerror or exc}") from None
