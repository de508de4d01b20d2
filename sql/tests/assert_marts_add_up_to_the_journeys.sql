-- Every journey is counted exactly once in each mart that covers all journeys, and the open
-- backlog covers exactly the open ones. Rows = failures.
WITH totals AS (
    SELECT
        (SELECT count(*) FROM {{ ref('core_journeys') }}) AS journeys,
        (SELECT count(*) FROM {{ ref('core_journeys') }} WHERE is_open) AS open_journeys,
        (SELECT coalesce(sum(journeys), 0) FROM {{ ref('mart_daily_kpis') }}) AS kpi_journeys,
        (SELECT coalesce(sum(journeys), 0) FROM {{ ref('mart_channel_paths') }}) AS path_journeys,
        (SELECT coalesce(sum(journeys), 0) FROM {{ ref('mart_csat_by_friction') }}) AS friction_journeys,
        (SELECT coalesce(sum(open_journeys), 0) FROM {{ ref('mart_open_backlog') }}) AS backlog_journeys,
        (SELECT coalesce(sum(open_journeys), 0) FROM {{ ref('mart_daily_kpis') }}) AS kpi_open
)
SELECT * FROM totals
WHERE kpi_journeys <> journeys OR path_journeys <> journeys OR friction_journeys <> journeys
   OR backlog_journeys <> open_journeys OR kpi_open <> open_journeys
