-- stg_events: one row per landed event (table `events`), typed and keyed for modelling.
-- Layer: staging (reads landing tables only). Grain: event_id.
--   event_id        contract event_id (unique)
--   event_type      e.g. ticket.created, chat.message, survey.responded
--   event_family    ticket | chat | survey (the part of event_type before the dot)
--   type_rank       tie-break for equal occurred_at (created/started 0, assigned 1, message 2,
--                   status 3, chat.ended 4, survey 5); event order = (occurred_at, type_rank, event_id)
--   occurred_at     event time (TIMESTAMPTZ)
--   occurred_date   UTC calendar day of occurred_at (independent of the session time zone)
--   customer_id     customer the event is about
--   thread_type     ticket | chat; NULL for surveys (they reference a thread instead)
--   thread_id       ticket_id of ticket events, chat_id of chat events; NULL for surveys
--   thread_key      'ticket:<id>' / 'chat:<id>' (as in journeys.threads); NULL for surveys
--   ticket_id, chat_id, survey_id, channel, handler_type, agent_id, team, status, author,
--   outcome, csat, nps   contract fields as landed (NULL when absent)
--   batch_id        pipeline batch that landed the event
--   landed_at       wall-clock time it was landed
CREATE OR REPLACE VIEW stg_events AS
SELECT
    event_id,
    event_type,
    split_part(event_type, '.', 1) AS event_family,
    CASE event_type
        WHEN 'ticket.created' THEN 0 WHEN 'chat.started' THEN 0
        WHEN 'ticket.assigned' THEN 1 WHEN 'chat.assigned' THEN 1
        WHEN 'ticket.message' THEN 2 WHEN 'chat.message' THEN 2
        WHEN 'ticket.status_changed' THEN 3
        WHEN 'chat.ended' THEN 4
        ELSE 5
    END AS type_rank,
    occurred_at,
    CAST(timezone('UTC', occurred_at) AS DATE) AS occurred_date,
    customer_id,
    CASE WHEN event_type LIKE 'ticket.%' THEN 'ticket' WHEN event_type LIKE 'chat.%' THEN 'chat' END AS thread_type,
    CASE WHEN event_type LIKE 'ticket.%' THEN ticket_id WHEN event_type LIKE 'chat.%' THEN chat_id END AS thread_id,
    CASE WHEN event_type LIKE 'ticket.%' THEN 'ticket:' || ticket_id
         WHEN event_type LIKE 'chat.%' THEN 'chat:' || chat_id END AS thread_key,
    ticket_id,
    chat_id,
    survey_id,
    channel,
    handler_type,
    agent_id,
    team,
    status,
    author,
    outcome,
    csat,
    nps,
    batch_id,
    landed_at
FROM events;
