-- mart_csat_by_friction: CSAT against handoffs and channel hops (documented in _marts.yml).
-- All journeys, open ones included. Sums are kept next to the (rounded) means so rows roll up
-- exactly, e.g. by handoff_bucket alone: sum(csat_sum) / sum(csat_responses).
SELECT
    handoff_bucket,
    hop_bucket,
    count(*) AS journeys,
    count(csat) AS csat_responses,
    round(count(csat) / count(*), 4) AS response_rate,
    sum(csat) AS csat_sum,
    round(avg(csat), 2) AS avg_csat,
    count(*) FILTER (WHERE csat >= 4) AS satisfied_responses,
    round(count(*) FILTER (WHERE csat >= 4) / nullif(count(csat), 0), 4) AS csat_satisfied_rate,
    count(nps) AS nps_responses,
    sum(nps) AS nps_sum,
    round(avg(nps), 2) AS avg_nps
FROM {{ ref('core_journeys') }}
GROUP BY handoff_bucket, hop_bucket
