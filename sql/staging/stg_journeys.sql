-- stg_journeys: one row per journey (table `journeys`), with UTC calendar days added.
-- Layer: staging. Grain: journey_id. All metrics are in event time (docs/journeys).
--   journey_id, customer_id, status (open | resolved | unresolved)
--   started_at           first thread start
--   started_date         UTC day of started_at
--   resolved_at          last time the journey became resolved; NULL unless resolved
--   resolved_date        UTC day of resolved_at
--   last_event_at        latest event of the journey
--   time_to_resolution_s resolved_at - started_at in seconds (reopen cycles included)
--   first_response_s     first agent-authored message - started_at, seconds; NULL if none yet
--   handoff_count        handoffs (work passing to another agent/team, escalations included)
--   team_handoff_count   handoffs in which the team changed
--   channel_hops         consecutive customer touchpoints on different channels
--   touchpoint_count     thread starts + customer messages with a known channel
--   contact_count        threads (tickets + chats)
--   reopen_count         ticket reopenings
--   csat, nps            latest non-null survey answers (1-5, 0-10)
--   fcr                  first-contact resolution: resolved, one contact, no reopen
--   channels, agents, teams   distinct values in first-seen order
--   threads              'ticket:<id>' / 'chat:<id>' in start order
--   event_count          events in the journey
--   updated_at           wall-clock time the row was last recomputed
--   batch_id             batch that last recomputed it
CREATE OR REPLACE VIEW stg_journeys AS
SELECT
    journey_id,
    customer_id,
    status,
    started_at,
    CAST(timezone('UTC', started_at) AS DATE) AS started_date,
    resolved_at,
    CAST(timezone('UTC', resolved_at) AS DATE) AS resolved_date,
    last_event_at,
    time_to_resolution_s,
    first_response_s,
    handoff_count,
    team_handoff_count,
    channel_hops,
    touchpoint_count,
    contact_count,
    reopen_count,
    csat,
    nps,
    fcr,
    channels,
    agents,
    teams,
    threads,
    event_count,
    updated_at,
    batch_id
FROM journeys;
