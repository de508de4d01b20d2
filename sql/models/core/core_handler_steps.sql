-- core_handler_steps: who held each thread, step by step, at two levels: the assigned agent
-- (humans and bots) and the assigned team (documented in _core.yml). Consecutive assignments to the
-- same handler are one step, so a step is a change of handler; assignments that do not name the
-- level are skipped (a team-only assignment is no agent step). The base of the ping-pong mart.
WITH assignments AS (
    SELECT e.event_id, e.occurred_at, e.type_rank, e.customer_id, e.thread_key, e.agent_id, e.team,
           e.handler_type, je.journey_id
    FROM {{ ref('stg_events') }} e
    LEFT JOIN {{ ref('stg_journey_events') }} je ON je.event_id = e.event_id
    WHERE e.event_type IN ('ticket.assigned', 'chat.assigned')
),
levels AS (
    SELECT 'agent' AS level, journey_id, customer_id, thread_key, event_id, occurred_at, type_rank,
           agent_id AS handler, handler_type
    FROM assignments WHERE agent_id IS NOT NULL
    UNION ALL
    SELECT 'team', journey_id, customer_id, thread_key, event_id, occurred_at, type_rank, team, NULL
    FROM assignments WHERE team IS NOT NULL
),
changes AS (
    SELECT *, lag(handler) OVER (
        PARTITION BY level, customer_id, thread_key ORDER BY occurred_at, type_rank, event_id) AS prior
    FROM levels
    QUALIFY prior IS NULL OR prior <> handler
),
steps AS (
    SELECT *,
           row_number() OVER w AS step,
           lag(handler) OVER w AS previous_handler,
           lag(handler, 2) OVER w AS handler_before_previous
    FROM changes
    WINDOW w AS (PARTITION BY level, customer_id, thread_key ORDER BY occurred_at, type_rank, event_id)
)
SELECT level, journey_id, customer_id, thread_key, step, occurred_at, event_id, handler, handler_type,
       previous_handler, handler_before_previous,
       coalesce(handler = handler_before_previous, false) AS is_bounce
FROM steps
