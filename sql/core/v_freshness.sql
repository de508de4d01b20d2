-- v_freshness: one row with the pipeline's freshness figures, computable in SQL alone.
-- (Lag needs the broker's end offsets: `cxj status` adds it.)
--   checked_at              now()
--   newest_occurred_at      newest landed event time
--   event_freshness_s       checked_at - newest_occurred_at, seconds
--   last_batch_id           newest landed batch
--   last_batch_at           when it finished landing
--   processing_freshness_s  checked_at - last_batch_at, seconds
--   last_batch_consumed     records the last batch read
--   last_batch_duration_s   its duration
--   landed_offset_total     sum of next offsets over all partitions
--   events_last_hour        events landed in the last hour
--   dead_letters_last_hour  dead letters landed in the last hour
--   p50_latency_s, p95_latency_s, p99_latency_s
--                           end-to-end latency (landed_at - Kafka record timestamp) of the
--                           events landed in the last hour
CREATE OR REPLACE VIEW v_freshness AS
WITH last_batch AS (
    SELECT batch_id, finished_at, consumed, duration_s FROM pipeline_batches ORDER BY batch_id DESC LIMIT 1
), recent AS (
    SELECT epoch(landed_at) - epoch(kafka_timestamp) AS latency_s
    FROM events WHERE landed_at >= now() - INTERVAL 1 HOUR AND kafka_timestamp IS NOT NULL
)
SELECT
    now() AS checked_at,
    (SELECT max(occurred_at) FROM events) AS newest_occurred_at,
    epoch(now()) - epoch((SELECT max(occurred_at) FROM events)) AS event_freshness_s,
    (SELECT batch_id FROM last_batch) AS last_batch_id,
    (SELECT finished_at FROM last_batch) AS last_batch_at,
    epoch(now()) - epoch((SELECT finished_at FROM last_batch)) AS processing_freshness_s,
    (SELECT consumed FROM last_batch) AS last_batch_consumed,
    (SELECT duration_s FROM last_batch) AS last_batch_duration_s,
    (SELECT coalesce(sum(next_offset), 0) FROM pipeline_offsets) AS landed_offset_total,
    (SELECT count(*) FROM events WHERE landed_at >= now() - INTERVAL 1 HOUR) AS events_last_hour,
    (SELECT count(*) FROM dead_letters WHERE landed_at >= now() - INTERVAL 1 HOUR) AS dead_letters_last_hour,
    (SELECT quantile_cont(latency_s, 0.5) FROM recent) AS p50_latency_s,
    (SELECT quantile_cont(latency_s, 0.95) FROM recent) AS p95_latency_s,
    (SELECT quantile_cont(latency_s, 0.99) FROM recent) AS p99_latency_s;
