-- mart_daily_kpis: daily journey KPIs by entry channel and team (documented in _marts.yml).
-- Journeys are counted on the UTC day they started (a cohort): later resolutions update the
-- day they started on. Hours, minutes and means are rounded to 2 decimals, rates to 4; the
-- *_sum columns make exact roll-ups across rows possible.
SELECT
    started_date AS day,
    entry_channel AS channel,
    team,
    count(*) AS journeys,
    count(*) FILTER (WHERE status = 'resolved') AS resolved_journeys,
    count(*) FILTER (WHERE status = 'unresolved') AS unresolved_journeys,
    count(*) FILTER (WHERE status = 'open') AS open_journeys,
    round(quantile_cont(time_to_resolution_s, 0.5) / 3600.0, 2) AS median_ttr_h,
    round(quantile_cont(time_to_resolution_s, 0.9) / 3600.0, 2) AS p90_ttr_h,
    count(*) FILTER (WHERE fcr) AS fcr_journeys,
    round(count(*) FILTER (WHERE fcr) / nullif(count(*) FILTER (WHERE status = 'resolved'), 0), 4) AS fcr_rate,
    sum(handoff_count) AS handoff_sum,
    round(avg(handoff_count), 2) AS avg_handoffs,
    round(avg(team_handoff_count), 2) AS avg_team_handoffs,
    sum(channel_hops) AS channel_hop_sum,
    round(avg(channel_hops), 2) AS avg_channel_hops,
    round(avg(contact_count), 2) AS avg_contacts,
    round(quantile_cont(first_response_s, 0.5) / 60.0, 2) AS median_first_response_min,
    count(csat) AS csat_responses,
    sum(csat) AS csat_sum,
    round(avg(csat), 2) AS avg_csat,
    count(*) FILTER (WHERE csat >= 4) AS satisfied_responses,
    round(count(*) FILTER (WHERE csat >= 4) / nullif(count(csat), 0), 4) AS csat_satisfied_rate
FROM {{ ref('core_journeys') }}
GROUP BY started_date, entry_channel, team
