-- core_journeys: one row per journey with the attributes the marts slice by (documented in _core.yml).
WITH last_team AS (
    SELECT je.journey_id,
           last(e.team ORDER BY e.occurred_at, e.type_rank, e.event_id) AS team
    FROM {{ ref('stg_events') }} e
    JOIN {{ ref('stg_journey_events') }} je ON je.event_id = e.event_id
    WHERE e.event_type IN ('ticket.assigned', 'chat.assigned') AND e.team IS NOT NULL
    GROUP BY je.journey_id
)
SELECT
    j.journey_id,
    j.customer_id,
    j.status,
    j.status = 'open' AS is_open,
    j.started_at,
    j.started_date,
    j.resolved_at,
    j.resolved_date,
    j.last_event_at,
    j.time_to_resolution_s,
    j.time_to_resolution_s / 3600.0 AS time_to_resolution_h,
    j.first_response_s,
    j.handoff_count,
    j.team_handoff_count,
    j.channel_hops,
    j.touchpoint_count,
    j.contact_count,
    j.reopen_count,
    j.csat,
    j.nps,
    j.fcr,
    coalesce(j.channels[1], 'unknown') AS entry_channel,
    coalesce(j.teams[1], 'unassigned') AS entry_team,
    coalesce(t.team, 'unassigned') AS team,
    j.csat >= 4 AS csat_satisfied,
    CASE WHEN j.handoff_count >= 3 THEN '3+' ELSE CAST(j.handoff_count AS VARCHAR) END AS handoff_bucket,
    CASE WHEN j.channel_hops >= 3 THEN '3+' ELSE CAST(j.channel_hops AS VARCHAR) END AS hop_bucket,
    j.channels,
    j.agents,
    j.teams,
    j.threads,
    j.event_count
FROM {{ ref('stg_journeys') }} j
LEFT JOIN last_team t ON t.journey_id = j.journey_id
