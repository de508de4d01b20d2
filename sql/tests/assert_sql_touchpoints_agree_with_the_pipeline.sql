-- core_touchpoints and core_journey_paths re-derive in SQL what the pipeline computes in
-- Python: per journey, touchpoints = touchpoint_count and hops = channel_hops. Rows = failures.
SELECT j.journey_id, j.touchpoint_count, j.channel_hops, t.touchpoints, t.hops, p.path_hops
FROM {{ ref('core_journeys') }} j
LEFT JOIN (
    SELECT journey_id, count(*) AS touchpoints, sum(is_hop::INT) AS hops
    FROM {{ ref('core_touchpoints') }} GROUP BY journey_id
) t ON t.journey_id = j.journey_id
JOIN {{ ref('core_journey_paths') }} p ON p.journey_id = j.journey_id
WHERE coalesce(t.touchpoints, 0) <> j.touchpoint_count
   OR coalesce(t.hops, 0) <> j.channel_hops
   OR p.path_hops <> j.channel_hops
