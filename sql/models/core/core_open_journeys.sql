-- core_open_journeys: every open journey with its age, in event time (documented in _core.yml).
-- Ages are measured at as_of, the latest occurred_at landed: the data's own "now", so a replay,
-- a delayed feed or an old extract gives the same buckets as live data. The base of
-- mart_open_backlog.
WITH clock AS (
    SELECT max(occurred_at) AS as_of FROM {{ ref('stg_events') }}
),
aged AS (
    SELECT j.journey_id, j.customer_id, j.entry_channel, j.team, j.started_at, j.started_date,
           j.last_event_at, j.handoff_count, j.reopen_count, c.as_of,
           (epoch(c.as_of) - epoch(j.started_at)) / 3600.0 AS age_h,
           (epoch(c.as_of) - epoch(j.last_event_at)) / 3600.0 AS idle_h
    FROM {{ ref('core_journeys') }} j
    CROSS JOIN clock c
    WHERE j.is_open
)
SELECT
    *,
    CASE WHEN age_h < 1 THEN 1 WHEN age_h < 4 THEN 2 WHEN age_h < 24 THEN 3
         WHEN age_h < 72 THEN 4 WHEN age_h < 168 THEN 5 ELSE 6 END AS bucket_order,
    ['0-1h', '1-4h', '4-24h', '1-3d', '3-7d', '7d+'][
        CASE WHEN age_h < 1 THEN 1 WHEN age_h < 4 THEN 2 WHEN age_h < 24 THEN 3
             WHEN age_h < 72 THEN 4 WHEN age_h < 168 THEN 5 ELSE 6 END] AS age_bucket
FROM aged
