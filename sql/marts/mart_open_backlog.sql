-- mart_open_backlog: open journeys by age, per entry channel.
-- Layer: marts. Grain: (age_bucket, channel).
-- Ages are in event time: measured at as_of, the latest occurred_at landed (the data's "now";
-- replayed or delayed data gives the same answer as live data).
--   as_of              latest occurred_at among all landed events
--   age_bucket         '0-1h', '1-4h', '4-24h', '1-3d', '3-7d', '7d+' (as_of - started_at)
--   bucket_order       1..6, for sorting the buckets
--   channel            entry channel
--   open_journeys      journeys with status open
--   median_age_h       median age, hours
--   max_age_h          oldest age, hours
--   oldest_started_at  started_at of the oldest
--   median_idle_h      median time since the journey's last event, hours
--   with_handoffs      of them with at least one handoff
--   with_reopens       of them with at least one reopen
CREATE OR REPLACE VIEW mart_open_backlog AS
WITH clock AS (
    SELECT max(occurred_at) AS as_of FROM stg_events
),
open_journeys AS (
    SELECT j.*, c.as_of,
           (epoch(c.as_of) - epoch(j.started_at)) / 3600.0 AS age_h,
           (epoch(c.as_of) - epoch(j.last_event_at)) / 3600.0 AS idle_h
    FROM core_journeys j CROSS JOIN clock c
    WHERE j.is_open
),
bucketed AS (
    SELECT *,
           CASE WHEN age_h < 1 THEN 1 WHEN age_h < 4 THEN 2 WHEN age_h < 24 THEN 3
                WHEN age_h < 72 THEN 4 WHEN age_h < 168 THEN 5 ELSE 6 END AS bucket_order
    FROM open_journeys
)
SELECT
    any_value(as_of) AS as_of,
    ['0-1h', '1-4h', '4-24h', '1-3d', '3-7d', '7d+'][bucket_order] AS age_bucket,
    bucket_order,
    entry_channel AS channel,
    count(*) AS open_journeys,
    median(age_h) AS median_age_h,
    max(age_h) AS max_age_h,
    min(started_at) AS oldest_started_at,
    median(idle_h) AS median_idle_h,
    count(*) FILTER (WHERE handoff_count > 0) AS with_handoffs,
    count(*) FILTER (WHERE reopen_count > 0) AS with_reopens
FROM bucketed
GROUP BY bucket_order, entry_channel;
