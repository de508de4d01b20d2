-- mart_channel_paths: how often each channel path occurs, e.g. 'chat -> email -> phone'.
-- Layer: marts. Grain: path.
-- A journey's path is the channels of its touchpoints (core_touchpoints) in time order with
-- consecutive repeats collapsed, so 'chat -> email -> chat' is kept and its hops are
-- path_length - 1 = journeys.channel_hops. Journeys without touchpoints have path '(none)'.
--   path                 channels joined with ' -> '
--   path_length          channels in the path (0 for '(none)')
--   channel_hops         path_length - 1 (0 for '(none)')
--   journeys             journeys with this path
--   share                journeys / all journeys
--   resolved_journeys    of them resolved
--   fcr_rate             fcr journeys / resolved journeys (NULL when none resolved)
--   median_ttr_h         median time to resolution of the resolved ones, hours
--   avg_handoffs         mean handoff_count
--   csat_responses       journeys with a CSAT answer
--   avg_csat             mean CSAT of those
CREATE OR REPLACE VIEW mart_channel_paths AS
WITH steps AS (
    SELECT journey_id, seq, channel
    FROM core_touchpoints
    WHERE previous_channel IS NULL OR channel <> previous_channel
),
paths AS (
    SELECT journey_id, list(channel ORDER BY seq) AS channels
    FROM steps
    GROUP BY journey_id
),
journey_paths AS (
    SELECT j.*, coalesce(len(p.channels), 0) AS path_length,
           coalesce(array_to_string(p.channels, ' -> '), '(none)') AS path
    FROM core_journeys j
    LEFT JOIN paths p ON p.journey_id = j.journey_id
)
SELECT
    path,
    path_length,
    greatest(path_length - 1, 0) AS channel_hops,
    count(*) AS journeys,
    count(*) / sum(count(*)) OVER () AS share,
    count(*) FILTER (WHERE status = 'resolved') AS resolved_journeys,
    count(*) FILTER (WHERE fcr) / nullif(count(*) FILTER (WHERE status = 'resolved'), 0) AS fcr_rate,
    quantile_cont(time_to_resolution_s, 0.5) / 3600.0 AS median_ttr_h,
    avg(handoff_count) AS avg_handoffs,
    count(csat) AS csat_responses,
    avg(csat) AS avg_csat
FROM journey_paths
GROUP BY path, path_length;
