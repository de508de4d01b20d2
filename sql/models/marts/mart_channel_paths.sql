-- mart_channel_paths: how often each channel path occurs (documented in _marts.yml).
-- Paths come from core_journey_paths. Hours and means are rounded to 2 decimals, rates to 4.
SELECT
    p.path,
    p.path_length,
    p.path_hops AS channel_hops,
    count(*) AS journeys,
    round(count(*) / sum(count(*)) OVER (), 4) AS share,
    count(*) FILTER (WHERE j.status = 'resolved') AS resolved_journeys,
    round(count(*) FILTER (WHERE j.fcr) / nullif(count(*) FILTER (WHERE j.status = 'resolved'), 0), 4) AS fcr_rate,
    round(quantile_cont(j.time_to_resolution_s, 0.5) / 3600.0, 2) AS median_ttr_h,
    round(avg(j.handoff_count), 2) AS avg_handoffs,
    count(j.csat) AS csat_responses,
    sum(j.csat) AS csat_sum,
    round(avg(j.csat), 2) AS avg_csat
FROM {{ ref('core_journey_paths') }} p
JOIN {{ ref('core_journeys') }} j ON j.journey_id = p.journey_id
GROUP BY p.path, p.path_length, p.path_hops
