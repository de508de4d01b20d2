-- core_touchpoints: the customer's touchpoints of each journey, in event order (documented in _core.yml).
-- A touchpoint is a thread start (the first ticket.created / chat.started of a thread) or a
-- customer-authored message; a chat message takes its chat's channel. Touchpoints without a
-- known channel are left out, exactly as journeys.channel_hops counts them, so per journey
-- count(*) = touchpoint_count and sum(is_hop::INT) = channel_hops. Surveys are not touchpoints.
WITH ev AS (
    SELECT e.event_id, e.event_type, e.type_rank, e.occurred_at, e.customer_id, e.thread_type,
           e.thread_id, e.thread_key, e.chat_id, e.channel, e.author, je.journey_id
    FROM {{ ref('stg_events') }} e
    JOIN {{ ref('stg_journey_events') }} je ON je.event_id = e.event_id
),
starts AS (
    SELECT *, row_number() OVER (
        PARTITION BY customer_id, thread_key ORDER BY occurred_at, type_rank, event_id) AS nth
    FROM ev
    WHERE event_type IN ('ticket.created', 'chat.started')
),
chat_channel AS (
    SELECT customer_id, thread_id AS chat_id, channel FROM starts WHERE nth = 1 AND thread_type = 'chat'
),
touch AS (
    SELECT journey_id, customer_id, event_id, occurred_at, type_rank, 'thread_start' AS kind, thread_key, channel
    FROM starts WHERE nth = 1
    UNION ALL
    SELECT journey_id, customer_id, event_id, occurred_at, type_rank, 'customer_message', thread_key, channel
    FROM ev WHERE event_type = 'ticket.message' AND author = 'customer'
    UNION ALL
    SELECT ev.journey_id, ev.customer_id, ev.event_id, ev.occurred_at, ev.type_rank, 'customer_message',
           ev.thread_key, cc.channel
    FROM ev LEFT JOIN chat_channel cc ON cc.customer_id = ev.customer_id AND cc.chat_id = ev.chat_id
    WHERE ev.event_type = 'chat.message' AND ev.author = 'customer'
),
ordered AS (
    SELECT *,
           row_number() OVER w AS seq,
           lag(channel) OVER w AS previous_channel
    FROM touch
    WHERE channel IS NOT NULL
    WINDOW w AS (PARTITION BY journey_id ORDER BY occurred_at, type_rank, event_id)
)
SELECT journey_id, customer_id, seq, occurred_at, event_id, kind, thread_key, channel, previous_channel,
       coalesce(channel <> previous_channel, false) AS is_hop
FROM ordered
