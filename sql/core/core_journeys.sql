-- core_journeys: one row per journey with the attributes the marts slice by.
-- Layer: core (reads staging views only). Grain: journey_id.
--   journey_id, customer_id, status, started_at, started_date, resolved_at, resolved_date,
--   last_event_at, time_to_resolution_s, first_response_s, handoff_count, team_handoff_count,
--   channel_hops, touchpoint_count, contact_count, reopen_count, csat, nps, fcr, channels,
--   agents, teams, threads, event_count     as in stg_journeys
--   is_open               status = 'open'
--   time_to_resolution_h  time_to_resolution_s / 3600
--   entry_channel         channel of the first touchpoint (channels[1]); 'unknown' if none
--   entry_team            first team assigned in the journey (teams[1]); 'unassigned' if none
--   team                  team of the journey's LAST assignment that named a team (the team that
--                         holds or resolved the work); 'unassigned' if no assignment named one
--   csat_satisfied        csat >= 4 (NULL without a CSAT answer)
--   handoff_bucket        handoff_count as '0', '1', '2', '3+'
--   hop_bucket            channel_hops as '0', '1', '2', '3+'
CREATE OR REPLACE VIEW core_journeys AS
WITH last_team AS (
    SELECT je.journey_id,
           last(e.team ORDER BY e.occurred_at, e.type_rank, e.event_id) AS team
    FROM stg_events e
    JOIN stg_journey_events je ON je.event_id = e.event_id
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
FROM stg_journeys j
LEFT JOIN last_team t ON t.journey_id = j.journey_id;
