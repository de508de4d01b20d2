-- mart_handoff_pingpong: work that bounced back within a thread: A -> B -> A (documented in _marts.yml).
-- Built from core_handler_steps: every step whose handler equals the handler two steps before
-- is one bounce; a chain A -> B -> A -> B has two (A via B, then B via A).
SELECT
    level,
    handler AS handler_a,
    previous_handler AS handler_b,
    handler || ' -> ' || previous_handler || ' -> ' || handler AS pattern,
    count(*) AS bounces,
    count(DISTINCT customer_id || chr(31) || thread_key) AS threads,
    count(DISTINCT journey_id) AS journeys,
    min(occurred_at) AS first_bounce_at,
    max(occurred_at) AS last_bounce_at
FROM {{ ref('core_handler_steps') }}
WHERE is_bounce
GROUP BY level, handler, previous_handler
