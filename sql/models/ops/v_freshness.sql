-- v_freshness: one row with the pipeline's freshness figures, computable in SQL alone
-- (documented in _ops.yml). Lag needs the broker's end offsets: `cxj status` adds it.
-- Seconds are rounded to 3 decimals (milliseconds).
WITH last_batch AS (
    SELECT batch_id, finished_at, consumed, duration_s
    FROM {{ source('cxj', 'pipeline_batches') }} ORDER BY batch_id DESC LIMIT 1
), recent AS (
    SELECT epoch(landed_at) - epoch(kafka_timestamp) AS latency_s
    FROM {{ source('cxj', 'events') }}
    WHERE landed_at >= now() - INTERVAL 1 HOUR AND kafka_timestamp IS NOT NULL
)
SELECT
    now() AS checked_at,
    (SELECT max(occurred_at) FROM {{ source('cxj', 'events') }}) AS newest_occurred_at,
    round(epoch(now()) - epoch((SELECT max(occurred_at) FROM {{ source('cxj', 'events') }})), 3) AS event_freshness_s,
    (SELECT batch_id FROM last_batch) AS last_batch_id,
    (SELECT finished_at FROM last_batch) AS last_batch_at,
    round(epoch(now()) - epoch((SELECT finished_at FROM last_batch)), 3) AS processing_freshness_s,
    (SELECT consumed FROM last_batch) AS last_batch_consumed,
    round((SELECT duration_s FROM last_batch), 3) AS last_batch_duration_s,
    (SELECT coalesce(sum(next_offset), 0) FROM {{ source('cxj', 'pipeline_offsets') }}) AS landed_offset_total,
    (SELECT count(*) FROM {{ source('cxj', 'events') }} WHERE landed_at >= now() - INTERVAL 1 HOUR) AS events_last_hour,
    (SELECT count(*) FROM {{ source('cxj', 'dead_letters') }} WHERE landed_at >= now() - INTERVAL 1 HOUR) AS dead_letters_last_hour,
    round((SELECT quantile_cont(latency_s, 0.5) FROM recent), 3) AS p50_latency_s,
    round((SELECT quantile_cont(latency_s, 0.95) FROM recent), 3) AS p95_latency_s,
    round((SELECT quantile_cont(latency_s, 0.99) FROM recent), 3) AS p99_latency_s
