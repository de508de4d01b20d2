-- mart_open_backlog: open journeys by age, per entry channel (documented in _marts.yml).
-- Ages come from core_open_journeys (event time, measured at the data's latest event).
SELECT
    any_value(as_of) AS as_of,
    age_bucket,
    bucket_order,
    entry_channel AS channel,
    count(*) AS open_journeys,
    round(median(age_h), 2) AS median_age_h,
    round(max(age_h), 2) AS max_age_h,
    min(started_at) AS oldest_started_at,
    round(median(idle_h), 2) AS median_idle_h,
    count(*) FILTER (WHERE handoff_count > 0) AS with_handoffs,
    count(*) FILTER (WHERE reopen_count > 0) AS with_reopens
FROM {{ ref('core_open_journeys') }}
GROUP BY age_bucket, bucket_order, entry_channel
