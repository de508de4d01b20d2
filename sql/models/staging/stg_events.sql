-- stg_events: one row per landed event, typed and keyed for modelling (documented in _staging.yml).
-- Event order everywhere is (occurred_at, type_rank, event_id), exactly the pipeline's.
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
FROM {{ source('cxj', 'events') }}
