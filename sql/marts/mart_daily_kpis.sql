-- mart_daily_kpis: daily journey KPIs by entry channel and team.
-- Layer: marts (reads core views only). Grain: (day, channel, team).
-- Journeys are counted on the UTC day they started (a cohort): later resolutions update the
-- day they started on. Time to resolution is over the cohort's resolved journeys.
--   day                    UTC day the journeys started (core_journeys.started_date)
--   channel                entry channel (first touchpoint's channel; 'unknown' if none)
--   team                   team of the journey's last team assignment ('unassigned' if none)
--   journeys               journeys started
--   resolved_journeys      ... now resolved
--   unresolved_journeys    ... now ended unresolved
--   open_journeys          ... still open
--   median_ttr_h           median time to resolution of the resolved ones, hours (interpolated)
--   p90_ttr_h              90th percentile of the same, hours (interpolated, quantile_cont)
--   fcr_journeys           resolved with one contact and no reopen
--   fcr_rate               fcr_journeys / resolved_journeys (NULL when none resolved)
--   avg_handoffs           mean handoff_count over all journeys
--   avg_team_handoffs      mean team_handoff_count
--   avg_channel_hops       mean channel_hops
--   avg_contacts           mean contact_count (threads per journey)
--   median_first_response_min  median first agent response, minutes (journeys with one)
--   csat_responses         journeys with a CSAT answer
--   avg_csat               mean CSAT (1-5) of those
--   csat_satisfied_rate    share of CSAT answers that are 4 or 5 (the usual "CSAT %")
CREATE OR REPLACE VIEW mart_daily_kpis AS
SELECT
    started_date AS day,
    entry_channel AS channel,
    team,
    count(*) AS journeys,
    count(*) FILTER (WHERE status = 'resolved') AS resolved_journeys,
    count(*) FILTER (WHERE status = 'unresolved') AS unresolved_journeys,
    count(*) FILTER (WHERE status = 'open') AS open_journeys,
    quantile_cont(time_to_resolution_s, 0.5) / 3600.0 AS median_ttr_h,
    quantile_cont(time_to_resolution_s, 0.9) / 3600.0 AS p90_ttr_h,
    count(*) FILTER (WHERE fcr) AS fcr_journeys,
    count(*) FILTER (WHERE fcr) / nullif(count(*) FILTER (WHERE status = 'resolved'), 0) AS fcr_rate,
    avg(handoff_count) AS avg_handoffs,
    avg(team_handoff_count) AS avg_team_handoffs,
    avg(channel_hops) AS avg_channel_hops,
    avg(contact_count) AS avg_contacts,
    quantile_cont(first_response_s, 0.5) / 60.0 AS median_first_response_min,
    count(csat) AS csat_responses,
    avg(csat) AS avg_csat,
    count(*) FILTER (WHERE csat >= 4) / nullif(count(csat), 0) AS csat_satisfied_rate
FROM core_journeys
GROUP BY started_date, entry_channel, team;
