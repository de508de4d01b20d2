-- core_journey_paths: each journey's channel path, e.g. 'chat -> email -> phone' (documented in _core.yml).
-- The channels of its touchpoints in time order with consecutive repeats collapsed, so
-- 'chat -> email -> chat' is kept and path_length - 1 = journeys.channel_hops. Journeys
-- without a touchpoint channel have the path '(none)'. The base of mart_channel_paths, and
-- what the report filters by day, channel and team.
WITH steps AS (
    SELECT journey_id, seq, channel
    FROM {{ ref('core_touchpoints') }}
    WHERE previous_channel IS NULL OR channel <> previous_channel
),
paths AS (
    SELECT journey_id, list(channel ORDER BY seq) AS channels
    FROM steps
    GROUP BY journey_id
)
SELECT
    j.journey_id,
    coalesce(array_to_string(p.channels, ' -> '), '(none)') AS path,
    coalesce(len(p.channels), 0) AS path_length,
    greatest(coalesce(len(p.channels), 0) - 1, 0) AS path_hops
FROM {{ ref('core_journeys') }} j
LEFT JOIN paths p ON p.journey_id = j.journey_id
